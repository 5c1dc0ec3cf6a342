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
