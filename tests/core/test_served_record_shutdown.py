"""Served cards are written off the request path (issue 16); a clean stop of `cds-service serve` loses none.

A real gunicorn server with two workers answers hook calls from several clients at once and gets SIGTERM
half-way, as a deployment stop sends it, with requests in flight; every card it answered (acknowledged)
must be in the database afterwards. (test_served_writer.py shows the exit flush with a slow database.)
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
import requests
from test_serve import free_port

from cds_service.registry import SERVICE_IDS
from cds_service.tooling.fixtures import build_request, load_manifest, service_templates


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_every_answered_card_is_stored_after_sigterm(tmp_path: Path, mode: str) -> None:
    port = free_port()
    env = {**os.environ, "CDS_ENV": "development", "CDS_AUTH_MODE": "off", "CDS_DATA_DIR": str(tmp_path),
           "CDS_WORKERS": "2", "CDS_SERVED_WRITES": mode}
    cli = Path(sys.executable).parent / "cds-service"
    process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    spec = load_manifest().get("acute-nonspecific-mri-2wk")
    body = build_request(spec.load(shift_to=date.today()), "order-select", service_templates()["order-select"])
    url = f"http://127.0.0.1:{port}/cds-services/{SERVICE_IDS['order-select']}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or a worker still starting
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("service did not become ready within 90 s")

        stopping = threading.Event()

        def call(n: int) -> list[str]:
            if n == 60:  # half-way, with requests in flight: stop the server as a deployment does
                stopping.set()
                os.kill(process.pid, signal.SIGTERM)
            try:
                response = requests.post(url, json=body, timeout=60)
            except requests.RequestException:
                assert stopping.is_set()  # only refused once the server is stopping
                return []
            if response.status_code != 200:
                assert stopping.is_set(), response.text
                return []
            return [card["uuid"] for card in response.json()["cards"]]

        with ThreadPoolExecutor(max_workers=6) as pool:
            answered = [uuid for cards in pool.map(call, range(120)) for uuid in cards]
        assert len(answered) >= 55  # the calls before the stop were answered, one card each
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # the master: a graceful stop of its workers
        process.wait(timeout=60)

    with sqlite3.connect(tmp_path / "cds.sqlite3") as conn:
        stored = {row[0] for row in conn.execute("SELECT card_uuid FROM served_cards")}
    assert set(answered) <= stored
