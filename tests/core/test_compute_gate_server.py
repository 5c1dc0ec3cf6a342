"""The compute gate in the real server: a hook call waiting on a slow FHIR server gives up its turn.

`cds-service serve` with one worker, four threads and a gate wait limit of 20 s (so that only the
release around the FHIR wait, not the limit, can let another call through). A patient-view without
prefetch waits ~3 s on a FHIR server that answers slowly; meanwhile a call with full prefetch, and
/healthz, must answer at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from hookreq import empty_prefetch, hook_request

from cds_service.tooling.fixtures import service_templates

FHIR_DELAY = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _SlowFhir(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(FHIR_DELAY)
        if self.path.startswith("/fhir/Patient/"):
            body = {"resourceType": "Patient", "id": "slow-1", "gender": "female", "birthDate": "1980-01-01"}
        else:
            body = {"resourceType": "Bundle", "type": "searchset", "total": 0}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def slow_fhir():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowFhir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()


@pytest.fixture()
def service(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "CDS_ENV": "production", "CDS_AUTH_MODE": "off", "CDS_DATA_DIR": str(tmp_path),
           "CDS_AUTO_MIGRATE": "true", "CDS_WORKERS": "1", "CDS_THREADS": "4", "CDS_GATE_WAIT_MS": "20000",
           "CDS_ALLOW_OPEN_FHIR_SERVERS": "true", "CDS_FHIR_TIMEOUT": "6", "CDS_DEADLINE": "7",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    # the metrics directory is not created here: `serve` creates it (a module imported before it did
    # once crashed the server at start-up)
    cli = Path(sys.executable).parent / "cds-service"
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "service did not start"
            time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def test_a_call_waiting_on_the_fhir_server_does_not_hold_up_the_others(service: str, slow_fhir: str):
    url = f"{service}/cds-services/lbp-patient-view"
    waiting = hook_request("patient-view", patient_id="slow-1", fhir_server=slow_fhir)  # no prefetch: fetched
    slow_result: dict[str, float | int] = {}

    def slow_call() -> None:
        started = time.monotonic()
        response = requests.post(url, json=waiting, timeout=30)
        slow_result.update(status=response.status_code, seconds=time.monotonic() - started)

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(1.0)  # the slow call is now waiting on the FHIR server
    templates = service_templates()["patient-view"]
    for n in range(3):
        body = hook_request("patient-view", patient_id=f"fast-{n}",
                            prefetch=empty_prefetch(templates, patient_id=f"fast-{n}"))
        started = time.monotonic()
        response = requests.post(url, json=body, timeout=30)
        assert response.status_code == 200
        assert time.monotonic() - started < 1.5, "a call with full prefetch waited for the slow one"
    started = time.monotonic()
    assert requests.get(f"{service}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0
    assert thread.is_alive(), "the slow call must still be waiting: the test proves nothing otherwise"
    thread.join(30)
    assert slow_result["status"] == 200
    assert slow_result["seconds"] >= FHIR_DELAY
    metrics = requests.get(f"{service}/metrics", timeout=5).text
    overflow = [line for line in metrics.splitlines() if line.startswith("cds_compute_gate_overflows_total")]
    assert not overflow or float(overflow[0].split()[-1]) == 0.0  # nobody had to skip the gate
