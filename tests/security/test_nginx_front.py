"""The shipped nginx front (deploy/nginx) and issue 15 items 8 and 9: Debian's nginx with the very
template, one `cds-service serve` behind it, TLS on loopback. Needs nginx (as tests/cluster does).

- an Authorization header up to the service's token limit passes nginx (no HTML 400 from its default
  8k header buffers); a longer header line gets a JSON 431;
- an X-Request-ID that could be an identifier never reaches nginx's access log (nginx substitutes its
  own id, which the service logs too); random ids, prefixed or not, pass through for correlation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cluster.harness import Nginx, client_session, parse_access_log

from cds_service.auth import MAX_TOKEN_CHARS

from .slow_clients import free_port, serve


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, requests.Session]]:
    directory = tmp_path_factory.mktemp("nginx-front")
    port = free_port()
    env = {"CDS_ENV": "production", "CDS_AUTH_MODE": "off", "CDS_WORKERS": "1", "CDS_DATA_DIR": str(directory),
           "CDS_AUTO_MIGRATE": "true", "CDS_LOG_LEVEL": "WARNING"}
    with serve(env, port, directory / "serve.log"):
        (directory / "nginx").mkdir()
        nginx = Nginx(directory / "nginx", [f"127.0.0.1:{port}"])
        nginx.start()
        session = client_session(str(nginx.cert))
        try:
            yield nginx, session
        finally:
            session.close()
            nginx.stop()


def test_a_token_at_the_services_limit_passes_nginx(front: tuple[Nginx, requests.Session]) -> None:
    nginx, session = front
    token = "a" * (MAX_TOKEN_CHARS - 20) + ".bbbbbbbbbb.cccccccc"
    response = session.get(nginx.url + "/healthz", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text[:200]


def test_a_longer_header_line_gets_json_431_from_nginx(front: tuple[Nginx, requests.Session]) -> None:
    nginx, session = front
    response = session.get(nginx.url + "/healthz", headers={"Authorization": "Bearer " + "a" * 20_000}, timeout=10)
    assert response.status_code == 431
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "request-header-fields-too-large"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("MRN-77881234", False), ("4111111111111111", False), ("1980-01-01", False),
     ("0b7f6c1e-3a4d-4c6e-9a51-2f7a8b9c0d1e", True), ("h4bf92f3577b34da6a3ce929d0e0e4736", True),
     ("4bf92f3577b34da6a3ce929d0e0e4736", True)],
)
def test_request_ids_through_nginx(front: tuple[Nginx, requests.Session], sent: str, kept: bool) -> None:
    nginx, session = front
    response = session.get(nginx.url + "/healthz", headers={"X-Request-ID": sent}, timeout=10)
    assert response.status_code == 200
    assert (response.headers["X-Request-ID"] == sent) is kept
    log = _access_log_once_it_has(nginx, response.headers["X-Request-ID"])
    assert (sent in log) is kept
    last = parse_access_log(log)[-1]
    assert last["rid"] == response.headers["X-Request-ID"]  # nginx and the service log one id


def _access_log_once_it_has(nginx: Nginx, request_id: str, timeout: float = 5.0) -> str:
    """The access log, read once it holds *request_id* (or after *timeout*): nginx writes a request's
    line after it has sent the response, so a read right after the response can miss it."""
    deadline = time.monotonic() + timeout
    while True:
        log = Path(nginx.access_log).read_text(encoding="utf-8")
        if request_id in log or time.monotonic() > deadline:
            return log
        time.sleep(0.02)
