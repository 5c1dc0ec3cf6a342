"""A real multi-instance deployment for tests/cluster, started once per session.

    nginx (Debian package, deploy/nginx/cds-service.conf.template, TLS on a loopback port)
      ├── instance a: `cds-service serve --workers 2` (gunicorn) on 127.0.0.1:<port>
      └── instance b: same, another port
    both on a throwaway PostgreSQL 15 cluster (initdb/pg_ctl, own port and data directory)

The schema is created the production way: `cds-service migrate`, run concurrently from several
processes before any instance starts. Instances run CDS_ENV=production with JWT authentication
`optional` (the load sends no token; the replay tests do), the console API on (analytics) and
patient hashing on.

Figures measured by the load tests are printed at the end of the run ("cluster figures") and, when
CDS_CLUSTER_FIGURES names a file, written there as JSON.

Requires nginx (`make cluster-deps`) and the PostgreSQL server binaries; a missing one fails the
tests loudly (as a missing PostgreSQL does for the rest of the suite), it never skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from .harness import CLI, OPS_TOKEN, Figures, Instance, Issuer, Nginx, PgCluster, _world_readable_tmpdir, free_port

WORKERS_PER_INSTANCE = 2
FIGURES: list[Figures] = []


@dataclass
class Cluster:
    pg: PgCluster
    database_url: str
    instances: list[Instance]
    nginx: Nginx
    issuer: Issuer
    directory: Path
    extra: list[Instance] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def verify(self) -> str:
        return str(self.nginx.cert)

    def instance(self, name: str) -> Instance:
        return next(i for i in self.instances if i.name == name)

    def ensure_up(self) -> None:
        """Every instance running and ready (a previous test may have killed one)."""
        for instance in self.instances:
            if not instance.alive():
                instance.start()
        for instance in self.instances:
            instance.wait_listening(60)
            instance.wait_ready(60)


def instance_env(database_url: str, issuer: Issuer, public_url: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PROMETHEUS_"))}
    return {
        **keep,
        "CDS_ENV": "production",
        "CDS_DATABASE_URL": database_url,
        "CDS_AUTH_MODE": "optional",
        "CDS_ISSUERS_FILE": str(issuer.issuers_file),
        "CDS_PUBLIC_BASE_URL": public_url,
        "CDS_CONSOLE": "true",
        "CDS_PATIENT_HASH_KEY": "cluster-test-hash-key",
        "CDS_LOG_LEVEL": "WARNING",
        "CDS_OPS_TOKEN": OPS_TOKEN,  # /metrics needs it in production (issue 15 item 11)
    }


def run_migrate_concurrently(database_url: str, processes: int = 3) -> list[subprocess.CompletedProcess]:
    """`cds-service migrate` from several processes at the same moment (as N hosts' deploy steps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    running = [
        subprocess.Popen([str(CLI), "migrate", "--database-url", database_url, "--timeout", "60"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    results = []
    for process in running:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    directory = _world_readable_tmpdir("cds-cluster-")
    pg = PgCluster().init()
    instances: list[Instance] = []
    nginx: Nginx | None = None
    try:
        pg.start()
        database_url = pg.create_database("cds")
        migrations = run_migrate_concurrently(database_url)
        assert all(r.returncode == 0 for r in migrations), [r.stderr for r in migrations]
        assert sum("upgraded" in r.stdout for r in migrations) == 1, [r.stdout for r in migrations]
        issuer = Issuer.create(directory)
        ports = [free_port(), free_port()]
        nginx = Nginx(directory, [f"127.0.0.1:{port}" for port in ports])
        env = instance_env(database_url, issuer, nginx.url)
        instances = [Instance(name, port, env, WORKERS_PER_INSTANCE, directory)
                     for name, port in zip("ab", ports, strict=True)]
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_listening(90)
            instance.wait_ready(30)
        nginx.start()
        yield Cluster(pg, database_url, instances, nginx, issuer, directory)
    finally:
        for instance in instances:
            instance.terminate()
        if nginx is not None:
            nginx.stop()
        pg.destroy()
        if os.environ.get("CDS_CLUSTER_KEEP_LOGS"):
            print(f"cluster logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def record_figures():
    def record(figures: Figures) -> Figures:
        FIGURES.append(figures)
        return figures

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not FIGURES:
        return
    terminalreporter.section("cluster figures (tests/cluster)")
    for figures in FIGURES:
        terminalreporter.write_line(figures.line())
    target = os.environ.get("CDS_CLUSTER_FIGURES")
    if target:
        Path(target).write_text(json.dumps([asdict(f) for f in FIGURES], indent=2), encoding="utf-8")
