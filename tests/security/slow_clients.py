"""Slow-client load against a real `cds-service serve`, and the latency probes that watch it.

Used by test_slow_clients.py (issue 15 item 1) and runnable by hand to compare serving models:

    PYTHONPATH=$PWD:tests python -m security.slow_clients --clients 200 --seconds 30

Two kinds of slow client, half each: one sends complete headers of a hook call with a large
Content-Length and then trickles the body one byte per second; the other trickles header lines (no
token) one per second and never finishes them. Meanwhile a probe calls ``/healthz`` and a valid,
signed hook call in turn, each on a fresh connection, and records how long each took.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

VIEW = "/cds-services/lbp-patient-view"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(env: dict[str, str], port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """`cds-service serve` in its own process group; stopped with SIGTERM to the group afterwards."""
    cli = Path(sys.executable).parent / "cds-service"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env={**os.environ, **env},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"cds-service serve did not start; see {log_path}")
            time.sleep(0.2)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class SlowClients:
    """``count`` connections kept open and fed one byte (or one header line) per second."""

    def __init__(self, port: int, count: int, host_header: str = "127.0.0.1"):
        self.port = port
        self.count = count
        self.host = host_header
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self.open_connections = 0
        self.reconnects = 0

    def _connect(self, index: int) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        if index % 2 == 0:  # complete headers, then the body one byte per second
            head = (f"POST {VIEW} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 100000\r\n\r\n").encode()
            sock.send(head)
            return sock, b"{" + b" " * 99_999
        # header lines one per second, no token, never finished
        sock.send(f"POST {VIEW} HTTP/1.1\r\n".encode())
        return sock, b"".join(b"X-Slow-%d: %s\r\n" % (i, b"v" * 8) for i in range(10_000))

    def _run(self) -> None:
        conns: list[tuple[socket.socket, bytes, int] | None] = [None] * self.count
        for index in range(self.count):
            try:
                sock, rest = self._connect(index)
                conns[index] = (sock, rest, 0)
            except OSError:
                conns[index] = None
        while not self._stop.is_set():
            started = time.monotonic()
            alive = 0
            for index, conn in enumerate(conns):
                if conn is None or self._stop.is_set():
                    try:
                        conns[index] = (*self._connect(index), 0)  # type: ignore[assignment]
                        self.reconnects += 1
                    except OSError:
                        continue
                    conn = conns[index]
                assert conn is not None
                sock, rest, pos = conn
                step = 1 if index % 2 == 0 else rest.index(b"\r\n", pos) + 2 - pos
                try:
                    sock.send(rest[pos:pos + step])
                    conns[index] = (sock, rest, pos + step)
                    alive += 1
                except (BlockingIOError, InterruptedError):
                    alive += 1
                except OSError:  # closed by the server: reopen next round (an attacker would)
                    sock.close()
                    conns[index] = None
            self.open_connections = alive
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        for conn in conns:
            if conn is not None:
                conn[0].close()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class Probe:
    """Latency of one kind of call over the run (seconds); failures count as the timeout."""

    name: str
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.times)
        return {
            "calls": len(ordered) + len(self.failures),
            "failures": len(self.failures),
            "max_ms": round(1000 * max(ordered), 1) if ordered else None,
            "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1) if ordered else None,
        }


def probe(port: int, seconds: float, hook_call: Callable[[requests.Session], requests.Response],
          timeout: float = 5.0, interval: float = 0.25) -> tuple[Probe, Probe]:
    """Call /healthz and the hook in turn for ``seconds``, each on a fresh connection."""
    health, hook = Probe("healthz"), Probe("hook")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for target, call in ((health, lambda s: s.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout)),
                             (hook, hook_call)):
            session = requests.Session()
            started = time.monotonic()
            try:
                response = call(session)
                elapsed = time.monotonic() - started
                if response.status_code == 200:
                    target.times.append(elapsed)
                else:
                    target.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except requests.RequestException as exc:
                target.failures.append(type(exc).__name__)
            finally:
                session.close()
        time.sleep(interval)
    return health, hook


def hook_caller(port: int, body: dict[str, Any], token: Callable[[], str | None],
                timeout: float = 5.0) -> Callable[[requests.Session], requests.Response]:
    raw = orjson.dumps(body)

    def call(session: requests.Session) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        bearer = token()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return session.post(f"http://127.0.0.1:{port}{VIEW}", data=raw, headers=headers, timeout=timeout)

    return call


def main() -> int:
    """Measure by hand with authentication off (the serving model does not depend on it)."""
    import argparse
    import tempfile

    from hookreq import empty_prefetch, hook_request

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--threads", default="4")
    args = parser.parse_args()
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    env = {"CDS_ENV": "production", "CDS_AUTH_MODE": "off", "CDS_WORKERS": args.workers,
           "CDS_THREADS": args.threads, "CDS_DATA_DIR": str(directory), "CDS_AUTO_MIGRATE": "true",
           "CDS_LOG_LEVEL": "WARNING"}
    with serve(env, port, directory / "serve.log"):
        templates = {s["id"]: s.get("prefetch", {}) for s in
                     requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=5).json()["services"]}
        body = hook_request(prefetch=empty_prefetch(templates["lbp-patient-view"]))
        body["hookInstance"] = str(uuid.uuid4())
        call = hook_caller(port, body, lambda: None)
        baseline = probe(port, 3, call)
        print("baseline", [p.summary() for p in baseline])
        with SlowClients(port, args.clients) as slow:
            time.sleep(3)
            under_load = probe(port, args.seconds, call)
            print("open slow connections", slow.open_connections, "reconnects", slow.reconnects)
        print("under load", [p.summary() for p in under_load])
    return 0


if __name__ == "__main__":
    sys.exit(main())
