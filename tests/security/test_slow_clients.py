"""Slow clients against the production server (issue 15 items 1 and 8), on the wire, loopback only.

`cds-service serve` as the README runs it in production: JWT required (one issuer, a JWKS file), two
workers of four threads. 200 slow clients for 30 s — half send complete headers and trickle the body
one byte per second, half trickle header lines without a token — while a probe calls ``/healthz`` and
a signed hook call in turn on fresh connections. Each must answer within 1 s throughout (the issue's
explicit target; measured maxima are ~30-60 ms, so the bound has a wide margin on 2 busy cores).
The measured times are printed (pytest -s) and recorded in docs/security.md.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hookreq import empty_prefetch, hook_request

from cds_service.auth import MAX_TOKEN_CHARS

from .conftest import ISS, SigningKey, claims_for
from .slow_clients import VIEW, SlowClients, free_port, hook_caller, probe, serve

CLIENTS = 200
SECONDS = 30.0
BOUND_SECONDS = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, SigningKey]) -> Iterator[tuple[int, str]]:
    directory = tmp_path_factory.mktemp("slow-clients")
    (directory / "jwks.json").write_text(json.dumps({"keys": [keys["ES384"].public_jwk]}), encoding="utf-8")
    (directory / "issuers.yaml").write_text(
        yaml.safe_dump({"issuers": [{"iss": ISS, "jwks_file": "jwks.json"}]}), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"CDS_ENV": "production", "CDS_AUTH_MODE": "required", "CDS_ISSUERS_FILE": str(directory / "issuers.yaml"),
           "CDS_PUBLIC_BASE_URL": base, "CDS_WORKERS": "2", "CDS_THREADS": "4", "CDS_DATA_DIR": str(directory),
           "CDS_AUTO_MIGRATE": "true", "CDS_LOG_LEVEL": "WARNING"}
    with serve(env, port, directory / "serve.log"):
        yield port, base


def _token(keys: dict[str, SigningKey], base: str, path: str = VIEW) -> str:
    return keys["ES384"].sign(claims_for(aud=base + path, jti=str(uuid.uuid4())))


def _hook_body(port: int, base: str, keys: dict[str, SigningKey]) -> dict[str, Any]:
    services = requests.get(f"{base}/cds-services", timeout=5,
                            headers={"Authorization": f"Bearer {_token(keys, base, '/cds-services')}"}).json()
    templates = {s["id"]: s.get("prefetch", {}) for s in services["services"]}
    return hook_request(prefetch=empty_prefetch(templates["lbp-patient-view"]))


def _header_deadline_answer(port: int, result: dict[str, Any]) -> None:
    """A client that never finishes its headers is answered 408 JSON and dropped."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            pass
    result["seconds"] = time.monotonic() - started
    result["answer"] = data


def test_200_slow_clients_do_not_delay_healthz_or_hook_calls(
    server: tuple[int, str], keys: dict[str, SigningKey]
) -> None:
    port, base = server
    call = hook_caller(port, _hook_body(port, base, keys), lambda: _token(keys, base))
    deadline_result: dict[str, Any] = {}
    watcher = threading.Thread(target=_header_deadline_answer, args=(port, deadline_result))
    with SlowClients(port, CLIENTS) as slow:
        time.sleep(2)  # every slow client connected and holding
        watcher.start()
        health, hook = probe(port, SECONDS, call, timeout=5.0)
        holding = slow.open_connections
    watcher.join(timeout=40)
    report = {"slow_clients": CLIENTS, "holding_at_end": holding, "seconds": SECONDS,
              "healthz": health.summary(), "hook": hook.summary()}
    print("\nslow clients:", json.dumps(report))
    assert holding >= CLIENTS * 0.9, report  # the load was really there
    for measured in (health, hook):
        assert not measured.failures, (measured.name, measured.failures[:5])
        assert len(measured.times) >= SECONDS / 2, report  # probed throughout
        assert max(measured.times) < BOUND_SECONDS, report
    head, _, body = deadline_result["answer"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), deadline_result
    assert json.loads(body)["error"] == "request-timeout"
    assert 8 <= deadline_result["seconds"] <= 20, deadline_result


def _raw_get(port: int, authorization: str) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /cds-services HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_oversized_tokens_get_json_from_the_app_then_from_the_server(server: tuple[int, str]) -> None:
    """Issue 15 item 8: up to the app's limit + 1 the app answers (401 malformed); beyond the aligned
    header-field limit the server answers JSON 431 instead of an HTML page."""
    port, _ = server
    token = "a" * (MAX_TOKEN_CHARS - 20) + ".bbbbbbbbbb.cccccccc"
    status, body = _raw_get(port, f"Bearer {token}x")
    assert status == 401 and body["error"] == "unauthorized", body
    status, body = _raw_get(port, f"Bearer {'a' * 20_000}.b.c")
    assert status == 431 and body["error"] == "request-header-fields-too-large", body


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: tuple[int, str]) -> None:
    """Content-Length over CDS_MAX_REQUEST_BYTES: 413 JSON at once, without waiting for the body."""
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {VIEW} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {50 * 1024 * 1024}\r\n\r\n{{".encode())
        started = time.monotonic()
        data = sock.recv(65536)
    assert time.monotonic() - started < 5
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:200]
    assert json.loads(body)["error"] == "request-entity-too-large"


def test_server_log_has_no_errors(server: tuple[int, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """No traceback or error line in the server's log after the slow-client run."""
    logs = list(Path(tmp_path_factory.getbasetemp()).glob("slow-clients*/serve.log"))
    assert logs
    text = logs[0].read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text
    assert '"level": "ERROR"' not in text
