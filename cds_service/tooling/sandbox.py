"""Sandbox FHIR R4 servers for development and integration tests: `cds-service sandbox`.

Two real servers, installed from the registries by the project's own files and bound to 127.0.0.1:

* ``sekmet``  — sekmet-fhir 0.1.1 (PyPI) in its own virtual environment (.sandbox/sekmet-venv),
  started by sandbox/sekmet/launch.py: in-memory SQLite, simulator and traffic logging off,
  static bearer token, and the search parameters 0.1.1 lacks registered before start.
* ``medplum`` — Medplum's FHIR router 5.x over its in-memory repository (npm, sandbox/medplum),
  behind sandbox/medplum/server.mjs, run by the Node 22 that npm installs there (package `node`).

`SandboxServer` installs what is missing, starts the server, waits for /metadata, loads
transaction Bundles (`load`) and stops it (terminate, then kill). The pytest fixture in
tests/integration/conftest.py uses the same class. See docs/sandbox.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import requests

from ..settings import PROJECT_ROOT, Settings
from . import ehr_launch

SERVERS = ("sekmet", "medplum")
DEFAULT_PORTS = {"sekmet": 8090, "medplum": 8091}
HOST = "127.0.0.1"
# A test token for servers that listen on loopback only; override with CDS_SANDBOX_TOKEN.
DEFAULT_TOKEN = "cds-sandbox-token"
MIN_NODE = (22, 18)
FHIR_JSON = "application/fhir+json"


# Medplum's router refuses a transaction with more than 50 updates ("more update operations than
# allowed", a constant of @medplum/fhir-router 5.2.13); a ward fixture patient has more resources.
MAX_TRANSACTION_ENTRIES = {"medplum": 50}


class SandboxError(RuntimeError):
    """A sandbox server could not be installed, started or loaded."""


@dataclass(frozen=True)
class Layout:
    """Where the sandbox sources are and where installs go (.sandbox/ and node_modules)."""

    root: Path = PROJECT_ROOT

    @property
    def sources(self) -> Path:
        return self.root / "sandbox"

    @property
    def state(self) -> Path:
        env = os.environ.get("CDS_SANDBOX_DIR")
        return Path(env) if env else self.root / ".sandbox"

    @property
    def sekmet_venv(self) -> Path:
        return self.state / "sekmet-venv"

    @property
    def sekmet_python(self) -> Path:
        return self.sekmet_venv / "bin" / "python"

    @property
    def sekmet_requirements(self) -> Path:
        return self.sources / "sekmet" / "requirements.txt"

    @property
    def sekmet_launcher(self) -> Path:
        return self.sources / "sekmet" / "launch.py"

    @property
    def medplum_dir(self) -> Path:
        return self.sources / "medplum"

    @property
    def node(self) -> Path:
        return self.medplum_dir / "node_modules" / "node" / "bin" / "node"

    @property
    def logs(self) -> Path:
        return self.state / "logs"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()


def _stamp_path(server: str, layout: Layout) -> Path:
    if server == "sekmet":
        return layout.sekmet_venv / ".cds-sandbox-stamp"
    return layout.medplum_dir / "node_modules" / ".cds-sandbox-stamp"


def _wanted_stamp(server: str, layout: Layout) -> str:
    if server == "sekmet":
        return _digest(layout.sekmet_requirements)
    return _digest(layout.medplum_dir / "package.json", layout.medplum_dir / ".npmrc")


def is_installed(server: str, layout: Layout | None = None) -> bool:
    """True when the server's install matches its pin files (a cheap stamp check)."""
    layout = layout or Layout()
    stamp = _stamp_path(server, layout)
    binary = layout.sekmet_python if server == "sekmet" else layout.node
    return binary.exists() and stamp.exists() and stamp.read_text().strip() == _wanted_stamp(server, layout)


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise SandboxError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def node_version(node: Path) -> tuple[int, ...]:
    out = subprocess.run([str(node), "--version"], stdout=subprocess.PIPE, text=True, timeout=30).stdout
    return tuple(int(part) for part in out.strip().lstrip("v").split(".")[:3])


@contextlib.contextmanager
def _install_lock(layout: Layout, server: str) -> Iterator[None]:
    """One installer at a time per server (parallel test runs, make -j)."""
    import fcntl

    layout.state.mkdir(parents=True, exist_ok=True)
    with open(layout.state / f".install-{server}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(server: str, layout: Layout | None = None, out: IO[str] | None = None, force: bool = False) -> float:
    """Install one server if its stamp is missing or stale; returns the seconds spent."""
    layout = layout or Layout()
    out = out or sys.stderr
    if server not in SERVERS:
        raise SandboxError(f"unknown sandbox server {server!r} (choose from {', '.join(SERVERS)})")
    with _install_lock(layout, server):
        if not force and is_installed(server, layout):
            return 0.0
        started = time.monotonic()
        if server == "sekmet":
            _install_sekmet(layout, out)
        else:
            _install_medplum(layout, out)
        _stamp_path(server, layout).write_text(_wanted_stamp(server, layout) + "\n")
        spent = time.monotonic() - started
        print(f"sandbox: {server} installed in {spent:.1f} s", file=out, flush=True)
        return spent


def _install_sekmet(layout: Layout, out: IO[str]) -> None:
    print(f"sandbox: installing sekmet-fhir into {layout.sekmet_venv} ...", file=out, flush=True)
    if not layout.sekmet_python.exists():
        _run([sys.executable, "-m", "venv", "--clear", str(layout.sekmet_venv)])
    _run(
        [
            str(layout.sekmet_python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(layout.sekmet_requirements),
        ]
    )


def _install_medplum(layout: Layout, out: IO[str]) -> None:
    npm = shutil.which("npm")
    if not npm:
        raise SandboxError("npm not found: run `make sandbox-deps` (installs Debian's nodejs and npm)")
    print(
        f"sandbox: installing Medplum packages and Node 22 into {layout.medplum_dir / 'node_modules'} ...",
        file=out,
        flush=True,
    )
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    _run(
        [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=layout.medplum_dir,
        env=env,
    )
    if not layout.node.exists():
        raise SandboxError(
            f"npm did not install Node 22 at {layout.node} (the `node` package's preinstall "
            "script did not run: check that install scripts are allowed)"
        )
    found = node_version(layout.node)
    if found[:2] < MIN_NODE:
        raise SandboxError(
            f"{layout.node} is Node {'.'.join(map(str, found))}; Medplum 5.x needs >= {'.'.join(map(str, MIN_NODE))}"
        )


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class LoadReport:
    bundles: int = 0
    entries: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


_RUNNING: set[SandboxServer] = set()  # strong references: a dropped object still gets stopped at exit


@atexit.register
def _stop_all() -> None:  # an interpreter exiting on an exception must not leave servers behind
    for server in list(_RUNNING):
        server.stop()


class SandboxServer:
    """One sandbox FHIR server process on 127.0.0.1.

    >>> with SandboxServer("medplum", port=8091) as fhir:     # doctest: +SKIP
    ...     fhir.load(bundle_files(Path("fixtures/patients")))
    ...     print(fhir.base_url)
    """

    def __init__(
        self,
        server: str = "sekmet",
        port: int | None = None,
        token: str | None = None,
        *,
        startup_timeout: float = 60.0,
        install_missing: bool = True,
        layout: Layout | None = None,
        out: IO[str] | None = None,
        verbose: bool = False,
    ) -> None:
        if server not in SERVERS:
            raise SandboxError(f"unknown sandbox server {server!r} (choose from {', '.join(SERVERS)})")
        self.server = server
        self.host = HOST
        self.port = port or free_port()
        self.token = token or os.environ.get("CDS_SANDBOX_TOKEN") or DEFAULT_TOKEN
        self.startup_timeout = startup_timeout
        self.install_missing = install_missing
        self.layout = layout or Layout()
        self.out = out or sys.stderr
        self.verbose = verbose
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.layout.logs / f"{server}-{self.port}.log"
        self.start_seconds = 0.0
        self._log: IO[bytes] | None = None
        self._http = requests.Session()
        self._http.headers.update({"Authorization": f"Bearer {self.token}", "Accept": FHIR_JSON})
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/fhir"

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        if self.server == "sekmet":
            cmd = [
                str(self.layout.sekmet_python),
                str(self.layout.sekmet_launcher),
                "--host",
                self.host,
                "--port",
                str(self.port),
            ]
        else:
            cmd = [
                str(self.layout.node),
                str(self.layout.medplum_dir / "server.mjs"),
                "--host",
                self.host,
                "--port",
                str(self.port),
            ]
        return [*cmd, "--verbose"] if self.verbose else cmd

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
        # The token goes by environment, not argv: no other local user can read it from `ps`.
        env["SEKMET_SANDBOX_TOKEN" if self.server == "sekmet" else "MEDPLUM_SANDBOX_TOKEN"] = self.token
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> SandboxServer:
        if self.process is not None:
            return self
        if not is_installed(self.server, self.layout):
            if not self.install_missing:
                raise SandboxError(f"{self.server} is not installed: run `make sandbox-deps`")
            install(self.server, self.layout, self.out)
        if _port_in_use(self.host, self.port):
            raise SandboxError(f"port {self.port} on {self.host} is already in use (pick another with --port)")
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.layout.state,
            start_new_session=True,
        )
        _RUNNING.add(self)
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Poll GET /metadata until it answers a CapabilityStatement."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SandboxError(
                    f"{self.server} exited with code {self.process.returncode} before it was "
                    f"ready; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                response = requests.get(f"{self.base_url}/metadata", timeout=2, headers={"Accept": FHIR_JSON})
                if response.status_code == 200 and response.json().get("resourceType") == "CapabilityStatement":
                    return
                last_error = f"HTTP {response.status_code}"
            except (requests.RequestException, ValueError) as exc:
                last_error = type(exc).__name__
            time.sleep(0.2)
        raise SandboxError(
            f"{self.server} did not answer {self.base_url}/metadata within {timeout:.0f} s "
            f"({last_error}); log {self.log_path}:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate (SIGTERM), wait, then kill. Safe to call twice."""
        with self._lock:
            process, self.process = self.process, None
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
            if self._log is not None:
                self._log.close()
                self._log = None
            self._http.close()
            _RUNNING.discard(self)

    # ------------------------------------------------------------------ data

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated call relative to the base URL (or to an absolute URL), with a timeout."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"
        kwargs.setdefault("timeout", (3, 30))
        return self._http.request(method, url, **kwargs)

    def load(
        self, bundles: Iterable[Path | dict[str, Any]], progress: bool = True, shift_to: date | None = None
    ) -> LoadReport:
        """POST each transaction/batch Bundle to the base URL; every entry must answer 2xx.

        Fixture files (a fixtures/manifest.yaml two levels up) have their dates shifted from the
        manifest's anchor to *shift_to* (cds_service.tooling.fixtures); None loads every file as written.
        """
        items = list(bundles)
        report = LoadReport()
        started = time.monotonic()
        width = len(str(len(items)))
        for number, item in enumerate(items, 1):
            name = str(item) if isinstance(item, Path) else f"bundle {number}"
            bundle = _read_bundle(item, shift_to) if isinstance(item, Path) else item
            if not _is_loadable(bundle):
                report.skipped.append(name)
                if progress:
                    print(
                        f"[{number:>{width}}/{len(items)}] {name}: skipped (not a transaction/batch Bundle)",
                        file=self.out,
                        flush=True,
                    )
                continue
            t0 = time.monotonic()
            entries = self._post_bundle(name, bundle)
            report.bundles += 1
            report.entries += entries
            if progress:
                print(
                    f"[{number:>{width}}/{len(items)}] {name}: {entries} entries in {time.monotonic() - t0:.2f} s",
                    file=self.out,
                    flush=True,
                )
        report.seconds = time.monotonic() - started
        if progress:
            print(
                f"loaded {report.bundles} bundles ({report.entries} entries) into {self.server} in "
                f"{report.seconds:.1f} s",
                file=self.out,
                flush=True,
            )
        return report

    def _post_bundle(self, name: str, bundle: dict[str, Any]) -> int:
        """POST one Bundle; a transaction longer than the server takes is sent in consecutive parts."""
        entries = bundle.get("entry") or []
        limit = MAX_TRANSACTION_ENTRIES.get(self.server)
        if limit and bundle.get("type") == "transaction" and len(entries) > limit:
            # the Patient comes first in our Bundles: every part after the first refers to a stored patient
            return sum(
                self._post_one(f"{name} (part {n // limit + 1})", {**bundle, "entry": entries[n : n + limit]})
                for n in range(0, len(entries), limit)
            )
        return self._post_one(name, bundle)

    def _post_one(self, name: str, bundle: dict[str, Any]) -> int:
        response = self.request(
            "POST",
            self.base_url,
            data=json.dumps(bundle),
            headers={"Content-Type": FHIR_JSON},
            timeout=(3, 120),
        )
        if response.status_code != 200:
            raise SandboxError(f"{name}: {self.server} answered {response.status_code}: {_diagnostics(response)}")
        body = response.json()
        failed = []
        for index, entry in enumerate(body.get("entry") or []):
            status = str((entry.get("response") or {}).get("status", ""))
            if not status[:1] == "2":
                failed.append(f"entry {index}: {status} {json.dumps((entry.get('response') or {}).get('outcome'))}")
        if failed:
            raise SandboxError(f"{name}: {len(failed)} entries failed on {self.server}:\n" + "\n".join(failed[:10]))
        return len(bundle.get("entry") or [])


def is_fixture_file(path: Path) -> bool:
    """A fixture patient Bundle: fixtures/patients/<slug>.json beside fixtures/manifest.yaml."""
    return (path.parent.parent / "manifest.yaml").is_file() and path.parent.name == "patients"


@functools.lru_cache(maxsize=8)
def _manifest_shifts(fixtures_dir: Path) -> tuple[date, dict[str, str]]:
    """(anchor, slug -> date_shift mode) of a fixtures/manifest.yaml, read once per directory."""
    from .fixtures import load_manifest

    manifest = load_manifest(fixtures_dir)
    return manifest.anchor, {spec.slug: spec.date_shift for spec in manifest.fixtures}


def _read_bundle(path: Path, shift_to: date | None = None) -> Any:
    try:
        if shift_to is not None and is_fixture_file(path):
            from .fixtures import load_fixture

            anchor, modes = _manifest_shifts(path.parent.parent.resolve())
            return load_fixture(path, shift_to, anchor=anchor, mode=modes.get(path.stem, "days"))
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise SandboxError(f"{path}: cannot read the Bundle: {exc}") from exc


def _is_loadable(bundle: Any) -> bool:
    return (
        isinstance(bundle, dict)
        and bundle.get("resourceType") == "Bundle"
        and bundle.get("type") in ("transaction", "batch")
    )


def _diagnostics(response: requests.Response) -> str:
    try:
        body = response.json()
        return "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text")) for i in body.get("issue", []))
    except ValueError:
        return response.text[:500]


def bundle_files(*paths: Path) -> list[Path]:
    """JSON files to load: a file as is, a directory recursively, in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise SandboxError(f"{path}: no such file or directory")
    return files


# ---------------------------------------------------------------------- command line


DESCRIPTION = (
    "Start a sandbox FHIR R4 server on 127.0.0.1, load transaction Bundles, print its base URL; Ctrl-C stops it. "
    "See docs/sandbox.md."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        choices=(*SERVERS, "all"),
        default="sekmet",
        help="which server (default sekmet; 'all' only with --install-only)",
    )
    parser.add_argument("--port", type=int, help="port (default 8090 for sekmet, 8091 for medplum)")
    parser.add_argument(
        "--load",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a Bundle file or a directory of them (recursive); repeatable",
    )
    parser.add_argument(
        "--shift-to",
        default="today",
        metavar="DAY",
        help="shift fixture dates (fixtures/patients/*.json) from the manifest anchor to DAY: "
        "'today' (default), YYYY-MM-DD, or 'none' to load them as written",
    )
    parser.add_argument("--token", help=f"bearer token (default $CDS_SANDBOX_TOKEN or {DEFAULT_TOKEN!r})")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for /metadata (default 60)")
    parser.add_argument("--install-only", action="store_true", help="install what is missing and exit")
    parser.add_argument("--verbose", action="store_true", help="server logs every request (see the log file)")
    ehr_launch.add_arguments(parser)  # the EHR launch layer in front of the server (SMART apps)


def command(args: argparse.Namespace) -> int:
    """``cds-service sandbox``."""
    try:
        if args.install_only:
            for server in SERVERS if args.server == "all" else (args.server,):
                install(server)
                print(
                    f"sandbox: {server} ready ({'installed' if is_installed(server) else 'missing'})",
                    file=sys.stderr,
                )
            return 0
        if args.server == "all":
            print("sandbox: --server all is only for --install-only", file=sys.stderr)
            return 2
        return _serve(args)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1


def _shift_day(text: str) -> date | None:
    if text == "none":
        return None
    if text == "today":  # the service's clock: the site's time zone (CDS_TIMEZONE)
        return Settings.from_env().now().date()
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise SandboxError(f"--shift-to: expected today, none or YYYY-MM-DD, got {text!r}") from exc


def _serve(args: argparse.Namespace) -> int:
    files = bundle_files(*args.load)
    shift_to = _shift_day(args.shift_to)
    server = SandboxServer(
        args.server,
        args.port or DEFAULT_PORTS[args.server],
        args.token,
        startup_timeout=args.timeout,
        verbose=args.verbose,
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    ehr = None
    try:
        print(f"sandbox: starting {args.server} on {server.base_url} ...", file=sys.stderr, flush=True)
        server.start()
        print(
            f"sandbox: {args.server} answered /metadata after {server.start_seconds:.1f} s (log {server.log_path})",
            file=sys.stderr,
            flush=True,
        )
        if files:
            server.load(files, shift_to=shift_to)
        ehr = ehr_launch.start_for(server, args, sys.stderr)
        print(server.base_url, flush=True)
        print(
            f"sandbox: bearer token {server.token!r}; try: curl -H 'Authorization: Bearer {server.token}' "
            f"{server.base_url}/Patient",
            file=sys.stderr,
        )
        print("sandbox: Ctrl-C stops the server", file=sys.stderr, flush=True)
        while server.alive():
            time.sleep(0.5)
        print(
            f"sandbox: {args.server} exited unexpectedly; log {server.log_path}:\n{server.log_tail()}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nsandbox: stopping ...", file=sys.stderr, flush=True)
        return 0
    finally:
        if ehr is not None:
            ehr.stop()
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        print("sandbox: stopped", file=sys.stderr, flush=True)
