"""`cds-service serve` starts gunicorn on 127.0.0.1 and serves discovery (what `make serve` runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_runs_gunicorn_on_loopback(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "CDS_ENV": "development", "CDS_DATA_DIR": str(tmp_path), "CDS_WORKERS": "2"}
    cli = Path(sys.executable).parent / "cds-service"
    process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        response = None
        while time.monotonic() < deadline:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=20)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert response is not None, "service did not start within 30 s"
        assert response.status_code == 200
        assert len(response.json()["services"]) == 3
        assert "gunicorn" not in response.headers.get("Server", "").lower()
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        assert ready.json()["status"] == "ready"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_a_worker_accepts_one_waiting_connection_at_a_time():
    """Workers share the listening socket; asyncio would let the first to wake take every waiting
    connection (and keep them: keep-alive). server._FairAcceptLoop takes one per readiness event."""
    import asyncio

    from cds_service.server import _FairAcceptLoop

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    loop = _FairAcceptLoop()
    try:
        time.sleep(0.05)  # the three connections wait in the accept queue
        loop._accept_connection(asyncio.Protocol, listener, None, None, 100)
        left = 0
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            conn.close()
            left += 1
        assert left == 2  # one accepted by the loop, two left for the other workers
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        for client in clients:
            client.close()
        listener.close()
