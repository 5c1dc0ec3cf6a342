"""HTTP hardening: security headers on every kind of response (errors and 404s included), no stack
trace or server software/version anywhere — in process for every status the app produces, and on
the wire against the real gunicorn server for the errors gunicorn answers itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from hookreq import empty_prefetch, hook_request

from .conftest import SigningKey

REQUIRED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LEAKS = ("Traceback", 'File "', "werkzeug", "gunicorn", "python", "flask", "sqlalchemy", "jinja")
VIEW = "/cds-services/lbp-patient-view"


def _leak_free(text: str) -> None:
    lowered = text.lower()
    for marker in LEAKS:
        assert marker.lower() not in lowered, marker


def assert_hardened(response: Any, what: str) -> None:
    for name, value in REQUIRED_HEADERS.items():
        assert response.headers.get(name) == value, (what, name, response.headers.get(name))
    assert response.headers.get("Content-Security-Policy"), what
    assert response.headers.get("X-Request-ID"), what
    assert "Origin" in response.headers.get("Vary", ""), what
    for header in ("Server", "X-Powered-By"):
        _leak_free(response.headers.get(header, ""))
    _leak_free(response.get_data(as_text=True))
    if response.status_code >= 400 and response.mimetype == "application/json":
        body = response.get_json()
        assert body.get("error") and body.get("message"), (what, body)
    if response.status_code >= 400:
        assert response.mimetype == "application/json", (what, response.mimetype)


def _valid_view(app: Flask) -> dict[str, Any]:
    return hook_request(prefetch=empty_prefetch(app.extensions["cds"].services["lbp-patient-view"].prefetch))


Call = tuple[str, str, dict[str, Any]]


def _development_calls(app: Flask) -> dict[str, Call]:
    valid = _valid_view(app)
    return {
        "discovery-200": ("GET", "/cds-services", {}),
        "invoke-200": ("POST", VIEW, {"json": valid}),
        "invoke-400": ("POST", VIEW, {"json": {"hook": "patient-view"}}),
        "invoke-400-malformed": ("POST", VIEW, {"data": b"{", "content_type": "application/json"}),
        "invoke-404-service": ("POST", "/cds-services/nope", {"json": valid}),
        "invoke-412": ("POST", VIEW, {"json": hook_request()}),
        "invoke-413": ("POST", VIEW, {"data": b"x" * 5000, "content_type": "application/json"}),
        "invoke-415": ("POST", VIEW, {"data": b"{}", "content_type": "text/plain"}),
        "feedback-200": ("POST", VIEW + "/feedback", {"json": {"feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}}),
        "feedback-400": ("POST", VIEW + "/feedback", {"json": {"feedback": []}}),
        "404-path": ("GET", "/no/such/path", {}),
        "404-dotdot": ("GET", "/static/../../etc/passwd", {}),
        "405-get-invoke": ("GET", VIEW, {}),
        "405-put": ("PUT", "/cds-services", {}),
        "405-delete": ("DELETE", VIEW, {}),
        "405-trace": ("TRACE", "/cds-services", {}),
        "head-discovery": ("HEAD", "/cds-services", {}),
        "options-no-origin": ("OPTIONS", VIEW, {}),
        "options-preflight": ("OPTIONS", VIEW, {"headers": {"Origin": "http://localhost:3000",
                                                             "Access-Control-Request-Method": "POST"}}),
        "healthz": ("GET", "/healthz", {}),
        "readyz": ("GET", "/readyz", {}),
        "openapi": ("GET", "/openapi.yaml", {}),
        # /metrics is checked on the wire below: in process (no gunicorn) prometheus-client adds its
        # default collectors, python_info with the interpreter version among them.
        "console": ("GET", "/console/", {}),
    }


@pytest.fixture
def dev_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(max_request_bytes=4096, console_enabled=True)


def test_every_kind_of_response_is_hardened(dev_app: Flask) -> None:
    client = dev_app.test_client()
    statuses: dict[str, int] = {}
    for what, (method, path, kwargs) in _development_calls(dev_app).items():
        response = client.open(path, method=method, **kwargs)
        statuses[what] = response.status_code
        if what == "console" and response.status_code == 404:
            continue  # console blueprint not present in this build
        assert response.status_code < 500, (what, response.status_code)
        assert_hardened(response, what)
        if path.startswith("/cds-services"):
            assert response.headers.get("Cache-Control") == "no-store", what
    expected = {"invoke-400": 400, "invoke-404-service": 404, "invoke-412": 412, "invoke-413": 413,
                "invoke-415": 415, "404-path": 404, "405-get-invoke": 405, "405-trace": 405}
    assert {k: statuses[k] for k in expected} == expected


def test_a_500_is_hardened_and_carries_only_the_request_id(dev_app: Flask) -> None:
    services = dev_app.extensions["cds"].services
    service = services["lbp-patient-view"]

    def explode(_inp: Any) -> list[Any]:
        raise RuntimeError("/srv/app/secret.py line 3: password=hunter2")

    services["lbp-patient-view"] = dataclasses.replace(service, evaluate=explode)
    response = dev_app.test_client().post(VIEW, json=_valid_view(dev_app), headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert_hardened(response, "500")
    assert response.get_json() == {"error": "internal-error",
                                   "message": "unexpected error; quote the request id to support",
                                   "requestId": "req-42"}
    assert response.headers["X-Request-ID"] == "req-42"


def test_hostile_request_ids_are_replaced_not_echoed(dev_app: Flask) -> None:
    client = dev_app.test_client()
    for hostile in ("x" * 65, "a b", "<script>", "id\r\nSet-Cookie: a=b", "a/b", "a;b", ""):
        try:
            response = client.get("/healthz", headers={"X-Request-ID": hostile})
        except ValueError:  # the client refuses to send a header with a newline: nothing to test
            continue
        assert response.headers["X-Request-ID"] != hostile
        assert len(response.headers["X-Request-ID"]) == 32


def test_non_ascii_request_ids_are_replaced(dev_app: Flask) -> None:
    response = dev_app.test_client().get("/healthz", headers={"X-Request-ID": "caf\u00e9"})
    assert response.headers["X-Request-ID"] != "caf\u00e9"


def test_production_401_and_errors_are_hardened(
    make_app: Callable[..., Flask], tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [keys["ES384"].public_jwk]}), encoding="utf-8")
    (tmp_path / "issuers.yaml").write_text(
        yaml.safe_dump({"issuers": [{"iss": "https://ehr.example.org", "jwks_file": "jwks.json"}]}), encoding="utf-8"
    )
    app = make_app(environment="production", auth_mode="required", issuers_file=tmp_path / "issuers.yaml",
                   public_base_url="http://localhost",
                   cors_origins=("https://ehr.example.org",))
    client = app.test_client()
    for what, response in {
        "401-missing": client.get("/cds-services"),
        "401-garbage": client.post(VIEW, json={}, headers={"Authorization": "Bearer a.b.c"}),
        "401-cors": client.get("/cds-services", headers={"Origin": "https://ehr.example.org"}),
        "403-preflight": client.options(VIEW, headers={"Origin": "https://evil.example",
                                                      "Access-Control-Request-Method": "POST"}),
        "404": client.get("/nothing"),
        "console-off": client.get("/console/"),
    }.items():
        assert response.status_code in (401, 403, 404), (what, response.status_code)
        assert_hardened(response, what)
        assert "Access-Control-Allow-Credentials" not in response.headers
    assert client.get("/console/").status_code == 404  # the console is off in production


# ------------------------------------------------------------------------------- on the wire (gunicorn)


OPS = "ops-token-live-3b9d"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`cds-service serve` (gunicorn, one worker) as in production, authentication off."""
    port = _free_port()
    env = {**os.environ, "CDS_ENV": "production", "CDS_AUTH_MODE": "off", "CDS_WORKERS": "1", "CDS_OPS_TOKEN": OPS,
           "CDS_DATA_DIR": str(tmp_path_factory.mktemp("live")), "CDS_MAX_REQUEST_BYTES": "65536"}
    cli = Path(sys.executable).parent / "cds-service"
    # the production recipe: the schema first (production refuses to start on an unmigrated one)
    subprocess.run([str(cli), "migrate"], env=env, check=True, capture_output=True, timeout=120)
    process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("cds-service serve did not start") from None
                time.sleep(0.2)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


RAW_REQUESTS = {
    "ok": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "404": b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "bad-request-line": b"GARBAGE\r\n\r\n",
    "bad-version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "http-0.9": b"GET /cds-services\r\n\r\n",
    "long-request-line": b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge-header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
    "too-many-headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
    "bad-chunked": b"POST /cds-services/lbp-patient-view HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
    "chunked-over-limit": b"POST /cds-services/lbp-patient-view HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                          + b"".join(b"4000\r\n" + b" " * 0x4000 + b"\r\n" for _ in range(6)) + b"0\r\n\r\n",
    "content-length-and-chunked": b"POST /cds-services/lbp-patient-view HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: 4\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative-content-length": b"POST /cds-services/lbp-patient-view HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: -1\r\n\r\n",
    "null-byte-path": b"GET /cds-services\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-uri": b"GET http://evil.example/cds-services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "metrics": b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + OPS.encode()
               + b"\r\nConnection: close\r\n\r\n",
    "metrics-without-token": b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("name", list(RAW_REQUESTS))
def test_raw_http_answers_reveal_no_software_or_trace(live_server: int, name: str) -> None:
    answer = _raw(live_server, RAW_REQUESTS[name])
    app_answers = ("ok", "404", "absolute-uri", "chunked-over-limit", "metrics", "metrics-without-token")
    if not answer:
        assert name not in app_answers, "no answer"
        return  # the server closed the connection: nothing revealed
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    status = int(status_line.split()[1])
    assert status < 500, status_line
    _leak_free(answer.decode("latin-1"))
    if name == "chunked-over-limit":
        assert status == 413, status_line
    if name == "bad-chunked":  # the server's parser refuses it (JSON); the app's handler if it got that far
        assert status == 400 and json.loads(body)["error"] in {"bad-request", "malformed-body"}, answer[:300]
    if name in ("huge-header", "too-many-headers"):
        assert status == 431 and json.loads(body)["error"] == "request-header-fields-too-large", answer[:300]
    if status >= 400:  # whoever answers, every error is JSON with the security headers (issue 15 item 8)
        lowered = head.decode("latin-1").lower()
        assert "content-type: application/json" in lowered, answer[:300]
        assert "x-content-type-options: nosniff" in lowered, answer[:300]
        assert json.loads(body)["message"], answer[:300]
    if name in ("ok", "metrics"):
        assert status == 200, status_line
    if name == "metrics-without-token":
        assert status == 401 and b'"unauthorized"' in body, answer[:300]
    if name in app_answers:  # answered by the app: its headers are on
        headers = head.decode("latin-1").lower()
        assert "x-content-type-options: nosniff" in headers
        assert "content-security-policy:" in headers


def _status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_tokens_up_to_the_apps_limit_reach_the_app_and_longer_ones_get_json_431(live_server: int) -> None:
    """Issue 15 item 8: the server's header-field limit is aligned with the app's 16 KiB token limit."""
    from cds_service.auth import MAX_TOKEN_CHARS

    def call(token_chars: int) -> tuple[int, dict[str, Any]]:
        token = "a" * (token_chars - 20) + ".bbbbbbbbbb.cccccccc"
        return _status_and_body(_raw(live_server, (
            f"GET /cds-services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n").encode()))

    assert call(MAX_TOKEN_CHARS)[0] == 200  # authentication is off on this server: the header was accepted
    assert call(MAX_TOKEN_CHARS + 1)[0] == 200
    status, body = call(MAX_TOKEN_CHARS + 200)
    assert status == 431 and body["error"] == "request-header-fields-too-large", body
    assert str(MAX_TOKEN_CHARS + 64) in body["message"]
