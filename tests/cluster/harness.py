"""Real engines for the multi-instance tests: a throwaway PostgreSQL cluster, `cds-service serve`
instances (gunicorn), nginx from Debian with the shipped config, and a bounded load generator.

Nothing here balances load or checks health: nginx does, with deploy/nginx/cds-service.conf.template
rendered as an operator would. Everything listens on 127.0.0.1 only and every wait is bounded.

The PostgreSQL cluster is the test's own (initdb + pg_ctl on a free port, data in a temporary
directory, run as the postgres user when the tests run as root): stopping or crashing it cannot
disturb the shared server on 5432 that other tests use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

REPO = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "cds-service.conf.template"
ROLLING_RESTART = REPO / "deploy" / "rolling-restart.sh"
CLI = Path(sys.executable).parent / "cds-service"
HTTP_TIMEOUT = (3, 40)  # (connect, read): every client call is bounded
ISSUER = "https://ehr.cluster-test.example"


#: The instances' CDS_OPS_TOKEN: /metrics needs it as a Bearer token in production.
OPS_TOKEN = "cluster-ops-token-6d0f2a"
OPS_HEADERS = {"Authorization": f"Bearer {OPS_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_session(verify: str | bool = True) -> requests.Session:
    """A session that ignores the environment (REQUESTS_CA_BUNDLE would override `verify`, and a
    proxy variable would send loopback calls elsewhere)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    return session


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition") -> float:
    """Poll until predicate() is true; returns the seconds waited; AssertionError after timeout."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except (requests.RequestException, OSError):
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def _world_readable_tmpdir(prefix: str) -> Path:
    """A temporary directory other local users (postgres, nginx's worker user) can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster


def find_pg_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgCluster:
    """initdb/pg_ctl on its own port and data directory; stop(mode="immediate") is a crash."""

    def __init__(self) -> None:
        bindir = find_pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql")
        self.bindir = bindir
        self.dir = _world_readable_tmpdir("cds-cluster-pg-")
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, program: str, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess:
        command = [str(self.bindir / program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr[-2000:]}\n{self.log_tail()}")
        return result

    def init(self) -> PgCluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": "120",
            "shared_buffers": "32MB",
            # durability as in production: a commit is on disk before the client hears "ok"
            "fsync": "on",
            "synchronous_commit": "on",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# cds-service cluster tests\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------------
# TLS material for nginx (self-signed, generated per run)


def make_tls(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------------------------------
# JWT: the EHR's signing key and the issuers file the instances trust


@dataclass
class Issuer:
    private_key: Any
    kid: str
    issuers_file: Path

    @classmethod
    def create(cls, directory: Path) -> Issuer:
        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        private = ec.generate_private_key(ec.SECP384R1())
        kid = f"cluster-{uuid.uuid4().hex[:8]}"
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        jwk.update({"kid": kid, "alg": "ES384", "use": "sig"})
        (directory / "ehr-jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        issuers = directory / "issuers.yaml"
        issuers.write_text(f"issuers:\n  - iss: {ISSUER}\n    jwks_file: ehr-jwks.json\n", encoding="utf-8")
        return cls(private, kid, issuers)

    def token(self, audience: str, jti: str | None = None) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 300,
                  "jti": jti or str(uuid.uuid4()), "sub": "cluster-test-ehr"}
        return jwt.encode(claims, self.private_key, algorithm="ES384", headers={"typ": "JWT", "kid": self.kid})


# --------------------------------------------------------------------------------------------------
# Service instances


class Instance:
    """One `cds-service serve` (gunicorn master + workers) on its own loopback port."""

    def __init__(self, name: str, port: int, env: dict[str, str], workers: int, directory: Path):
        self.name = name
        self.port = port
        self.workers = workers
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = {
            **env,
            "CDS_DATA_DIR": str(self.directory / "data"),
            # one metrics directory per instance: gunicorn's workers share it, instances must not
            "PROMETHEUS_MULTIPROC_DIR": str(self.directory / "metrics"),
        }
        self.process: subprocess.Popen | None = None
        self.log_path = self.directory / "instance.log"
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> Instance:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
        self.process = subprocess.Popen(
            [str(CLI), "serve", "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self, path: str) -> int:
        return requests.get(self.url + path, timeout=(1, 5)).status_code

    def wait_listening(self, timeout: float = 60) -> float:
        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"instance {self.name} exited: {self.log_tail()}")
            return self.status("/healthz") == 200

        return wait_until(up, timeout, what=f"{self.name} /healthz")

    def wait_ready(self, timeout: float = 60) -> float:
        return wait_until(lambda: self.status("/readyz") == 200, timeout, what=f"{self.name} /readyz")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL the whole instance (master and workers, as when its host or container dies)."""
        assert self.process is not None
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 40) -> None:
        """Graceful stop as systemd's KillMode=mixed does it: SIGTERM to the gunicorn master."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        try:  # workers left behind by a master that died first
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------------
# nginx (Debian package) with the shipped configuration


def render_nginx_conf(template: str, *, listen: str, server_name: str, cert: Path, key: Path,
                      access_log: Path, instances: Sequence[str]) -> str:
    """Fill the template's @@PLACEHOLDERS@@; the `server @@INSTANCE@@ …` line repeats per instance."""
    lines = []
    for line in template.splitlines():
        if "@@INSTANCE@@" in line:
            lines.extend(line.replace("@@INSTANCE@@", address) for address in instances)
        else:
            lines.append(line)
    text = "\n".join(lines) + "\n"
    for name, value in {"LISTEN": listen, "SERVER_NAME": server_name, "TLS_CERT": str(cert),
                        "TLS_KEY": str(key), "ACCESS_LOG": str(access_log)}.items():
        text = text.replace(f"@@{name}@@", value)
    leftover = re.findall(r"@@[A-Z_]+@@", text)
    assert not leftover, f"unfilled placeholders {leftover}"
    return text


class Nginx:
    def __init__(self, directory: Path, instances: Sequence[str]):
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise RuntimeError("nginx not found: `make cluster-deps` installs it from Debian")
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.cert, self.key = make_tls(directory)
        self.access_log = directory / "access.log"
        self.error_log = directory / "error.log"
        site = render_nginx_conf(
            NGINX_TEMPLATE.read_text(encoding="utf-8"), listen=f"127.0.0.1:{self.port}", server_name="127.0.0.1",
            cert=self.cert, key=self.key, access_log=self.access_log, instances=instances,
        )
        self.site = directory / "cds-service.conf"
        self.site.write_text(site, encoding="utf-8")
        # The wrapper Debian's /etc/nginx/nginx.conf provides in production, pointed at this directory.
        (directory / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {directory}/tmp/body;
    proxy_temp_path {directory}/tmp/proxy;
    fastcgi_temp_path {directory}/tmp/fastcgi;
    uwsgi_temp_path {directory}/tmp/uwsgi;
    scgi_temp_path {directory}/tmp/scgi;
    default_type application/octet-stream;
    include {directory}/cds-service.conf;
}}
""",
            encoding="utf-8",
        )
        (directory / "tmp").mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(self.error_log), *extra]

    def check_config(self) -> None:
        result = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"nginx -t: {result.stderr}"

    def start(self) -> Nginx:
        self.check_config()
        self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)

        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited: {self.process.stderr.read().decode(errors='replace')}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(listening, 20, what="nginx listening")
        return self

    def set_down(self, address: str, down: bool) -> None:
        """Take an instance out of rotation (or put it back), as deploy/rolling-restart.sh does: the
        script's own edit of the `server` line (--mark), nginx -t, graceful reload, wait for the old
        worker to finish its requests and exit."""
        env = {**os.environ, "NGINX_SITE": str(self.site)}
        subprocess.run(["bash", str(ROLLING_RESTART), "--mark", "down" if down else "up", address], env=env, check=True,
                       capture_output=True, timeout=30)
        self.check_config()
        old_workers = self._workers()
        subprocess.run(self._command("-s", "reload"), check=True, capture_output=True, timeout=30)
        wait_until(lambda: not (self._workers() & old_workers) and bool(self._workers()), 30, 0.05, "nginx reload")

    def _workers(self) -> set[int]:
        assert self.process is not None
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.add(int(stat.parent.name))
        return children

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log_entries(self) -> list[dict[str, str]]:
        return parse_access_log(self.access_log.read_text(errors="replace"))


_LOG_RE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) .*?rid=(?P<rid>\S+) '
    r'ua="(?P<upstream>[^"]*)" us="(?P<upstream_status>[^"]*)"'
)


def parse_access_log(text: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in map(_LOG_RE.search, text.splitlines()) if m]


# --------------------------------------------------------------------------------------------------
# Load: hook calls and feedback posts through nginx


def hook_requests(limit: int = 12) -> list[tuple[str, bytes]]:
    """(service id, JSON body with a HOOK_INSTANCE placeholder) for fixture patients that get cards."""
    from cds_service.registry import SERVICE_IDS
    from cds_service.tooling.fixtures import build_request, load_manifest, service_templates

    manifest = load_manifest()
    templates = service_templates()
    today = dt.date.today()
    chosen: list[tuple[str, bytes]] = []
    for spec in manifest.fixtures:
        loaded = None
        for hook in ("patient-view", "order-select", "order-sign"):
            if not spec.expected(hook):
                continue
            loaded = loaded or spec.load(today)
            body = build_request(loaded, hook, templates[hook])
            body["hookInstance"] = "HOOK_INSTANCE"
            chosen.append((SERVICE_IDS[hook], json.dumps(body).encode()))
        if len(chosen) >= limit:
            break
    return chosen[:limit]


@dataclass
class Call:
    kind: str  # hook | feedback
    request_id: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer (client-side error)
    error: str | None = None
    card_uuid: str | None = None  # feedback: the card it answers
    hook_request_id: str | None = None  # feedback: the hook call that served that card


@dataclass
class Load:
    """Bounded load: `threads` clients, each pacing to `rate_per_thread` hook calls per second, each
    hook call followed by a feedback post on one of its cards. Stops at stop() or `max_calls`."""

    base_url: str
    verify: str | bool
    requests_pool: list[tuple[str, bytes]]
    threads: int = 3
    rate_per_thread: float = 4.0
    max_calls: int = 4000
    feedback: bool = True
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def start(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True, name=f"load-{index}")
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        return self.calls

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            if len(self.calls) >= self.max_calls:
                self._stop.set()

    def _post(self, session: requests.Session, kind: str, path: str, body: bytes,
              card_uuid: str | None = None) -> tuple[Call, requests.Response | None]:
        request_id = f"{kind[0]}{uuid.uuid4().hex}"
        started = time.monotonic()
        try:
            response = session.post(self.base_url + path, data=body, timeout=HTTP_TIMEOUT,
                                    headers={"Content-Type": "application/json", "X-Request-ID": request_id})
            call = Call(kind, request_id, started, time.monotonic(), response.status_code, card_uuid=card_uuid)
            if response.status_code >= 400:
                try:
                    call.error = response.json().get("error")
                except ValueError:
                    call.error = "non-json"
            return call, response
        except requests.RequestException as exc:
            return Call(kind, request_id, started, time.monotonic(), 0, type(exc).__name__, card_uuid), None

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        session = client_session(self.verify)
        interval = 1.0 / self.rate_per_thread if self.rate_per_thread else 0.0
        next_at = time.monotonic() + rng.random() * interval
        while not self._stop.is_set():
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at = max(next_at + interval, time.monotonic() - interval)
            service_id, template = rng.choice(self.requests_pool)
            body = template.replace(b"HOOK_INSTANCE", str(uuid.uuid4()).encode())
            call, response = self._post(session, "hook", f"/cds-services/{service_id}", body)
            self._record(call)
            if not (self.feedback and response is not None and response.status_code == 200):
                continue
            cards = response.json().get("cards") or []
            if not cards:
                continue
            card = rng.choice(cards)
            item: dict[str, Any] = {"card": card["uuid"],
                                    "outcomeTimestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")}
            if card.get("suggestions"):
                item.update(outcome="accepted", acceptedSuggestions=[{"id": card["suggestions"][0]["uuid"]}])
            else:
                item.update(outcome="overridden")
                if card.get("overrideReasons"):
                    item["overrideReason"] = {"reason": card["overrideReasons"][0], "userComment": "load test"}
            feedback_call, _ = self._post(session, "feedback", f"/cds-services/{service_id}/feedback",
                                          json.dumps({"feedback": [item]}).encode(), card["uuid"])
            feedback_call.hook_request_id = call.request_id
            self._record(feedback_call)
        session.close()


@dataclass
class Figures:
    """What a scenario measured (printed at the end of the pytest run and in the lead's report)."""

    scenario: str
    seconds: float
    hooks_sent: int
    hooks_ok: int
    hooks_failed: int
    feedback_sent: int
    feedback_acked: int
    feedback_503: int
    feedback_failed_other: int
    retried_by_nginx: int
    retried_hooks: int
    retried_feedback: int
    feedback_stored_of_acked: int
    feedback_stored_total: int
    feedback_rows_duplicated: int
    feedback_flagged: int  # stored but not joined to its card (unknown-card: served while the database was down)
    failures_by_status: dict[str, int]
    cross_instance_feedback: int
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.scenario}: {self.seconds:.0f}s, hooks {self.hooks_sent} sent / {self.hooks_ok} ok / "
            f"{self.hooks_failed} failed; feedback {self.feedback_sent} sent / {self.feedback_acked} acked / "
            f"{self.feedback_503} clean 503 / {self.feedback_failed_other} other failures; "
            f"nginx retried {self.retried_by_nginx} ({self.retried_hooks} hook, {self.retried_feedback} feedback); "
            f"acked feedback stored {self.feedback_stored_of_acked}/{self.feedback_acked}, rows stored "
            f"{self.feedback_stored_total}, duplicates {self.feedback_rows_duplicated}, "
            f"not joined to their card {self.feedback_flagged}; "
            f"failures by status {self.failures_by_status}; cross-instance feedback {self.cross_instance_feedback}"
            + (f"; {self.notes}" if self.notes else "")
        )


def stored_feedback(database_url: str, card_uuids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """card uuid → (feedback rows stored for it, of which not joined to a served card)."""
    import sqlalchemy as sa

    from cds_service.store import feedback

    wanted = list(set(card_uuids))
    counts: dict[str, tuple[int, int]] = {}
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                unjoined = sa.func.sum(sa.case((feedback.c.flag.is_(None), 0), else_=1))
                rows = conn.execute(
                    sa.select(feedback.c.card_uuid, sa.func.count(), unjoined)
                    .where(feedback.c.card_uuid.in_(chunk)).group_by(feedback.c.card_uuid)
                )
                counts.update({row[0]: (int(row[1]), int(row[2])) for row in rows})
    finally:
        engine.dispose()
    return counts


def summarise(scenario: str, calls: list[Call], seconds: float, nginx_entries: list[dict[str, str]],
              database_url: str, notes: dict[str, Any] | None = None) -> Figures:
    by_rid = {entry["rid"]: entry for entry in nginx_entries}
    hooks = [c for c in calls if c.kind == "hook"]
    posts = [c for c in calls if c.kind == "feedback"]
    acked = [c for c in posts if 200 <= c.status < 300]
    stored = stored_feedback(database_url, [c.card_uuid for c in posts if c.card_uuid])
    retried = [c for c in calls if "," in by_rid.get(c.request_id, {}).get("upstream", "")]
    failures: dict[str, int] = {}
    for call in calls:
        if not 200 <= call.status < 300:
            key = f"{call.kind} {call.status or call.error}" + (f" {call.error}" if call.status and call.error else "")
            failures[key] = failures.get(key, 0) + 1
    # feedback answered by another instance than the one that served its card (joined in the database)
    def instance(request_id: str | None) -> str | None:
        entry = by_rid.get(request_id or "")
        return entry["upstream"].split(",")[-1].strip() if entry else None

    cross = sum(1 for c in acked
                if instance(c.hook_request_id) and instance(c.request_id) != instance(c.hook_request_id))
    return Figures(
        scenario=scenario,
        seconds=seconds,
        hooks_sent=len(hooks),
        hooks_ok=sum(1 for c in hooks if c.status == 200),
        hooks_failed=sum(1 for c in hooks if c.status != 200),
        feedback_sent=len(posts),
        feedback_acked=len(acked),
        feedback_503=sum(1 for c in posts if c.status == 503 and c.error == "store-unavailable"),
        feedback_failed_other=sum(1 for c in posts if not 200 <= c.status < 300
                                  and not (c.status == 503 and c.error == "store-unavailable")),
        retried_by_nginx=len(retried),
        retried_hooks=sum(1 for c in retried if c.kind == "hook"),
        retried_feedback=sum(1 for c in retried if c.kind == "feedback"),
        feedback_stored_of_acked=sum(1 for c in acked if stored.get(c.card_uuid or "", (0, 0))[0] > 0),
        feedback_stored_total=sum(n for n, _ in stored.values()),
        feedback_rows_duplicated=sum(n - 1 for n, _ in stored.values() if n > 1),
        feedback_flagged=sum(flagged for _, flagged in stored.values()),
        failures_by_status=dict(sorted(failures.items())),
        cross_instance_feedback=cross,
        notes=notes or {},
    )
