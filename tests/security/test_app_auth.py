"""Client authentication through the whole app: every CDS Hooks endpoint, both modes, the proxy case,
what a 401 logs, and the per-issuer FHIR allowlist proven on the wire (SSRF).

Keys are generated per session (tests/security/conftest.py, ES384); the JWK Sets are written to files
next to an issuers file, exactly as an operator configures them. The FHIR servers are real local HTTP
servers that record every request they receive.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hookreq import empty_prefetch, hook_request

from cds_service.app import create_app
from cds_service.logging_setup import configure_logging
from cds_service.settings import SettingsError

from .conftest import SigningKey, claims_for
from .fhir_recorder import FhirRecorder, start_recorder, stop_recorder

ISS_A = "https://ehr-a.example.org"
ISS_B = "https://ehr-b.example.org"
BASE = "http://localhost"  # what the Flask test client calls
VIEW = "/cds-services/lbp-patient-view"
FEEDBACK = "/cds-services/lbp-patient-view/feedback"
FHIR_TOKEN = "fhir-access-token-7c1e9b"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}


def feedback_body() -> dict[str, Any]:
    return {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                          "outcomeTimestamp": "2026-01-01T10:00:00Z"}]}


@dataclass
class AuthApp:
    """An app with client authentication on, its test client and its captured JSON log."""

    app: Flask
    client: FlaskClient
    log: io.StringIO
    keys: dict[str, SigningKey]
    issued: list[str] = field(default_factory=list)

    def token(self, path: str, iss: str = ISS_A, key: str | None = None, aud: str | None = None,
              **claims: Any) -> str:
        """A token for a call to ``path``. ``key`` signs it with another key under the issuer's kid."""
        own = self.keys["ES384" if iss != ISS_B else "other-ES384"]
        signer = self.keys[key] if key else own
        token = signer.sign(claims_for(iss=iss, aud=aud if aud is not None else BASE + path, **claims), kid=own.kid)
        self.issued.append(token)
        return token

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             header: str | None = None) -> Any:
        headers = {}
        if header is not None:
            headers["Authorization"] = header
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.open(path, method=method, json=body, headers=headers)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def checks(self) -> list[str]:
        """Failed checks, in order, as logged by the authenticator."""
        return [line["check"] for line in self.lines() if line["message"].startswith("client authentication failed")]


@pytest.fixture(scope="module")
def _servers() -> Iterator[tuple[FhirRecorder, FhirRecorder]]:
    server_a, fhir_a = start_recorder()
    server_other, fhir_other = start_recorder()
    yield fhir_a, fhir_other
    stop_recorder(server_a)
    stop_recorder(server_other)


@pytest.fixture
def recorders(_servers: tuple[FhirRecorder, FhirRecorder]) -> tuple[FhirRecorder, FhirRecorder]:
    """Two loopback FHIR servers: A's own (on A's fhir_allowlist), and another one that is only on
    the global allowlist (loopback) — the one an SSRF attempt would point at. Fresh records per test."""
    for recorder in _servers:
        recorder.requests.clear()
        recorder.serve([PATIENT])
    return _servers


AuthAppFactory = Callable[..., AuthApp]


@pytest.fixture
def auth_app(
    make_app: Callable[..., Flask], tmp_path: Path, keys: dict[str, SigningKey],
    recorders: tuple[FhirRecorder, FhirRecorder],
) -> Iterator[AuthAppFactory]:
    """Build an app with CDS_AUTH_MODE and an issuers file: A (fhir_allowlist = A's server), B (none)."""
    fhir_a, _ = recorders
    root = logging.getLogger()
    level = root.level

    def build(mode: str = "required", issuers: list[dict[str, Any]] | None = None, **overrides: Any) -> AuthApp:
        (tmp_path / "jwks-a.json").write_text(json.dumps({"keys": [keys["ES384"].public_jwk]}), encoding="utf-8")
        (tmp_path / "jwks-b.json").write_text(json.dumps({"keys": [keys["other-ES384"].public_jwk]}),
                                              encoding="utf-8")
        entries = issuers if issuers is not None else [
            {"iss": ISS_A, "jwks_file": "jwks-a.json", "fhir_allowlist": [fhir_a.base]},
            {"iss": ISS_B, "jwks_file": "jwks-b.json"},
        ]
        issuers_file = tmp_path / f"issuers-{uuid.uuid4().hex[:8]}.yaml"
        issuers_file.write_text(yaml.safe_dump({"issuers": entries}), encoding="utf-8")
        overrides.setdefault("public_base_url", "http://localhost")  # the test client's URL
        overrides.setdefault("environment", "production")
        app = make_app(auth_mode=mode, issuers_file=issuers_file, **overrides)
        log = io.StringIO()
        configure_logging("INFO", stream=log)  # the app's own formatter and redaction, into a buffer
        return AuthApp(app, app.test_client(), log, keys)

    yield build
    for handler in list(root.handlers):
        if getattr(handler, "_cds_service_json_handler", False):
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def view_body(app: Flask, **kwargs: Any) -> dict[str, Any]:
    templates = app.extensions["cds"].services["lbp-patient-view"].prefetch
    return hook_request(prefetch=empty_prefetch(templates), **kwargs)


# ------------------------------------------------------------------------------------ every endpoint


ENDPOINTS = [("GET", "/cds-services"), ("POST", VIEW), ("POST", FEEDBACK)]


def _body(service: AuthApp, method: str, path: str) -> Any:
    if method == "GET":
        return None
    return feedback_body() if path.endswith("/feedback") else view_body(service.app)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=["discovery", "invoke", "feedback"])
def test_every_cds_hooks_endpoint_needs_a_valid_jwt(auth_app: AuthAppFactory, method: str, path: str) -> None:
    service = auth_app()
    body = _body(service, method, path)
    refused = {
        "missing": service.call(method, path, body=body),
        "header": service.call(method, path, body=body, header="Basic dXNlcjpwYXNz"),
        "malformed": service.call(method, path, body=body, header="Bearer not-a-jwt"),
        "signature": service.call(method, path, service.token(path, key="other-ES384"), body),
        "aud": service.call(method, path, service.token("/cds-services/elsewhere"), body),
        "exp": service.call(method, path, service.token(path, iat=1_700_000_000, exp=1_700_000_300), body),
        "iss": service.call(method, path, service.token(path, iss="https://unknown.example"), body),
    }
    for check, response in refused.items():
        assert response.status_code == 401, (check, response.get_json())
        assert response.mimetype == "application/json"
        payload = response.get_json()
        assert payload["error"] == "unauthorized" and payload["message"], payload
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.headers["Cache-Control"] == "no-store"
    assert service.checks().count("missing") >= 1
    assert set(refused) <= set(service.checks())

    accepted = service.call(method, path, service.token(path), body)
    assert accepted.status_code == 200, accepted.get_json()


def test_a_token_is_good_for_one_call_only(auth_app: AuthAppFactory) -> None:
    service = auth_app()
    token = service.token("/cds-services")
    assert service.call("GET", "/cds-services", token).status_code == 200
    replay = service.call("GET", "/cds-services", token)
    assert replay.status_code == 401
    assert service.checks()[-1] == "jti-replay"


def test_a_token_for_one_endpoint_is_refused_on_another(auth_app: AuthAppFactory) -> None:
    service = auth_app()
    discovery_token = service.token("/cds-services")
    assert service.call("POST", VIEW, discovery_token, view_body(service.app)).status_code == 401
    assert service.call("POST", FEEDBACK, service.token(VIEW), feedback_body()).status_code == 401
    assert service.checks() == ["aud", "aud"]


def test_unknown_service_is_401_before_404_so_ids_cannot_be_enumerated(auth_app: AuthAppFactory) -> None:
    service = auth_app()
    assert service.call("POST", "/cds-services/no-such-service", body={}).status_code == 401
    path = "/cds-services/no-such-service"
    assert service.call("POST", path, service.token(path), {}).status_code == 404


@pytest.mark.parametrize(
    "path_info",
    ["//cds-services", "///cds-services", "//cds-services/lbp-patient-view", "/cds-services/",
     "/cds-services/./lbp-patient-view", "/cds-services/../cds-services"],
)
def test_path_spellings_do_not_bypass_authentication(auth_app: AuthAppFactory, path_info: str) -> None:
    service = auth_app()
    for method in ("GET", "POST"):
        response = service.client.open("/", method=method, json={} if method == "POST" else None,
                                       environ_overrides={"PATH_INFO": path_info})
        assert response.status_code in (401, 404), (method, path_info, response.status_code)
        assert response.status_code != 200


def test_operational_endpoints_need_no_token(auth_app: AuthAppFactory) -> None:
    service = auth_app()
    for path in ("/healthz", "/readyz", "/openapi.yaml"):
        assert service.call("GET", path).status_code == 200, path


def test_cors_preflight_needs_no_token_but_the_call_does(auth_app: AuthAppFactory) -> None:
    origin = "https://ehr-a.example.org"
    service = auth_app(cors_origins=(origin,))
    preflight = service.client.options(VIEW, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    call = service.client.post(VIEW, json=view_body(service.app), headers={"Origin": origin})
    assert call.status_code == 401
    assert call.headers["Access-Control-Allow-Origin"] == origin  # so the browser can show the 401


# ---------------------------------------------------------------------------------------- audience


def test_public_base_url_behind_a_proxy(auth_app: AuthAppFactory) -> None:
    public = "https://cds.example.org/lbp"
    service = auth_app(public_base_url=public)
    good = service.token(VIEW, aud=public + VIEW)
    assert service.call("POST", VIEW, good, view_body(service.app)).status_code == 200
    internal = service.token(VIEW)  # aud = the URL the app sees behind the proxy: not what the EHR called
    assert service.call("POST", VIEW, internal, view_body(service.app)).status_code == 401
    assert service.checks()[-1] == "aud"


def test_public_base_url_makes_the_host_header_irrelevant(auth_app: AuthAppFactory) -> None:
    """A token minted for another CDS service cannot be replayed here by spoofing the Host header."""
    service = auth_app(public_base_url="https://cds.example.org")
    foreign = service.token(VIEW, aud="https://other-cds.example" + VIEW)
    response = service.client.post(VIEW, json=view_body(service.app), base_url="https://other-cds.example",
                                   headers={"Authorization": f"Bearer {foreign}"})
    assert response.status_code == 401
    assert service.checks()[-1] == "aud"


def test_public_base_url_trailing_slash_and_case_do_not_matter(auth_app: AuthAppFactory) -> None:
    service = auth_app(public_base_url="https://cds.example.org/")
    token = service.token(VIEW, aud="HTTPS://CDS.EXAMPLE.ORG:443" + VIEW + "/")
    assert service.call("POST", VIEW, token, view_body(service.app)).status_code == 200


# ------------------------------------------------------------------------------------ optional mode


def test_optional_mode(auth_app: AuthAppFactory) -> None:
    service = auth_app(mode="optional")
    body = view_body(service.app)
    assert service.call("GET", "/cds-services").status_code == 200
    assert service.call("POST", VIEW, body=body).status_code == 200
    assert service.call("POST", FEEDBACK, body=feedback_body()).status_code == 200
    # a token that is sent must be valid: never silently downgraded to anonymous
    assert service.call("POST", VIEW, service.token(VIEW, key="other-ES384"), body).status_code == 401
    assert service.call("POST", VIEW, body=body, header="Bearer").status_code == 401
    assert service.call("POST", VIEW, service.token(VIEW), body).status_code == 200


def test_off_mode_ignores_the_header(auth_app: AuthAppFactory) -> None:
    service = auth_app(mode="off")
    assert service.call("GET", "/cds-services", header="Bearer garbage").status_code == 200


# ------------------------------------------------------------------------------------------ logging


def test_a_401_log_line_names_the_check_and_never_the_token(auth_app: AuthAppFactory) -> None:
    service = auth_app()
    body = view_body(service.app)
    cases = {
        "signature": service.token(VIEW, key="other-ES384"),
        "aud": service.token("/cds-services"),
        "iss": service.token(VIEW, iss="https://unknown.example"),
        "exp": service.token(VIEW, iat=1_700_000_000, exp=1_700_000_300),
    }
    good = service.token(VIEW)
    assert service.call("POST", VIEW, good, body).status_code == 200
    for check, token in cases.items():
        assert service.call("POST", VIEW, token, body).status_code == 401
        request_line = service.lines()[-1]
        assert request_line["message"] == "request" and request_line["status"] == 401
        assert request_line["check"] == check and request_line["error"] == "unauthorized"
    assert service.call("POST", VIEW, good, body).status_code == 401  # replay
    assert service.lines()[-1]["check"] == "jti-replay"
    output = service.log.getvalue()
    for token in service.issued:
        assert token not in output
        for segment in token.split("."):
            assert segment not in output
    assert "eyJ" not in output and "Bearer" not in output
    failed = [line for line in service.lines() if line["message"].startswith("client authentication failed")]
    assert {line["check"] for line in failed} == {*cases, "jti-replay"}
    assert all(line["level"] == "WARNING" for line in failed)


# ------------------------------------------------------------------- per-issuer FHIR allowlist (SSRF)


def test_issuer_fhir_allowlist_blocks_a_server_outside_it(
    auth_app: AuthAppFactory, recorders: tuple[FhirRecorder, FhirRecorder]
) -> None:
    fhir_a, fhir_other = recorders
    service = auth_app()
    body = hook_request(fhir_server=fhir_other.base, token=FHIR_TOKEN)  # loopback: on the global list
    response = service.call("POST", VIEW, service.token(VIEW), body)
    assert response.status_code == 412, response.get_json()
    payload = response.get_json()
    assert payload["error"] == "prefetch-unavailable"
    assert all("allowlist" in item["reason"] for item in payload["missing"])
    assert fhir_other.requests == []  # not one request: the token and the queries never left
    assert fhir_a.requests == []
    assert FHIR_TOKEN not in service.log.getvalue()


def test_issuer_fhir_allowlist_admits_its_own_server_with_the_token(
    auth_app: AuthAppFactory, recorders: tuple[FhirRecorder, FhirRecorder]
) -> None:
    fhir_a, fhir_other = recorders
    service = auth_app()
    body = hook_request(fhir_server=fhir_a.base, token=FHIR_TOKEN)
    response = service.call("POST", VIEW, service.token(VIEW), body)
    assert response.status_code == 200, response.get_json()
    assert fhir_a.requests and all(r.authorization == f"Bearer {FHIR_TOKEN}" for r in fhir_a.requests)
    assert fhir_other.requests == []


def test_issuer_without_fhir_allowlist_uses_the_global_list(
    auth_app: AuthAppFactory, recorders: tuple[FhirRecorder, FhirRecorder]
) -> None:
    _, fhir_other = recorders
    service = auth_app()
    body = hook_request(fhir_server=fhir_other.base, token=FHIR_TOKEN)
    assert service.call("POST", VIEW, service.token(VIEW, iss=ISS_B), body).status_code == 200
    assert fhir_other.requests


def test_a_global_list_that_excludes_the_server_blocks_issuers_without_their_own(
    auth_app: AuthAppFactory, recorders: tuple[FhirRecorder, FhirRecorder]
) -> None:
    _, fhir_other = recorders
    service = auth_app(fhir_allowlist=("https://fhir.example.org/r4",))
    body = hook_request(fhir_server=fhir_other.base, token=FHIR_TOKEN)
    assert service.call("POST", VIEW, service.token(VIEW, iss=ISS_B), body).status_code == 412
    assert fhir_other.requests == []


@pytest.mark.parametrize(
    "fhir_server",
    [
        "{base}/../../elsewhere",
        "{base}-other",
        "{base}/%2e%2e/admin",
        "{scheme}://user@{host}/fhir",
        "{scheme}://{host}.evil.example/fhir",
    ],
)
def test_allowlist_tricks_make_no_request(
    auth_app: AuthAppFactory, recorders: tuple[FhirRecorder, FhirRecorder], fhir_server: str
) -> None:
    fhir_a, fhir_other = recorders
    service = auth_app()
    host = fhir_a.base.split("://", 1)[1].split("/", 1)[0]
    url = fhir_server.format(base=fhir_a.base, scheme="http", host=host)
    response = service.call("POST", VIEW, service.token(VIEW), hook_request(fhir_server=url, token=FHIR_TOKEN))
    assert response.status_code in (400, 412), response.get_json()
    assert fhir_a.requests == [] and fhir_other.requests == []


def test_plain_http_fhir_server_is_refused_where_https_is_allowed(
    auth_app: AuthAppFactory, recorders: tuple[FhirRecorder, FhirRecorder]
) -> None:
    """An https allowlist entry never admits the same host over http (a downgrade would expose the token)."""
    _, fhir_other = recorders
    https_base = fhir_other.base.replace("http://", "https://", 1)
    service = auth_app(issuers=[{"iss": ISS_A, "jwks_file": "jwks-a.json", "fhir_allowlist": [https_base]}])
    body = hook_request(fhir_server=fhir_other.base, token=FHIR_TOKEN)
    assert service.call("POST", VIEW, service.token(VIEW), body).status_code == 412
    assert fhir_other.requests == []


@pytest.mark.parametrize(
    ("entry", "allowed"),
    [
        ({"fhir_allowlist": ["http://fhir.example.org/r4"]}, False),
        ({"fhir_allowlist": ["https://fhir.example.org/r4"]}, True),
        ({"fhir_allowlist": ["http://127.0.0.1:8090/fhir", "http://localhost/fhir", "http://[::1]/fhir"]}, True),
        ({"fhir_allowlist": ["ftp://fhir.example.org/r4"]}, False),
        ({"fhir_allowlist": ["https://user:pw@fhir.example.org/r4"]}, False),
        ({"jwks_url": "http://keys.example.org/jwks.json", "jwks_file": None}, False),
    ],
    ids=["http-remote", "https", "loopback-http", "ftp", "credentials", "http-jwks-url"],
)
def test_https_is_required_except_for_loopback(
    auth_app: AuthAppFactory, entry: dict[str, Any], allowed: bool
) -> None:
    issuer = {"iss": ISS_A, "jwks_file": "jwks-a.json", **entry}
    issuer = {key: value for key, value in issuer.items() if value is not None}
    if allowed:
        auth_app(issuers=[issuer])
    else:
        with pytest.raises(SettingsError, match="CDS_ISSUERS_FILE"):
            auth_app(issuers=[issuer])


def test_required_mode_without_issuers_file_does_not_start(tmp_path: Path) -> None:
    from conftest import make_settings

    with pytest.raises(SettingsError):
        create_app(make_settings(tmp_path, environment="production", auth_mode="required"))


def test_production_refuses_to_start_without_a_public_base_url(auth_app: AuthAppFactory) -> None:
    """Without CDS_PUBLIC_BASE_URL the expected aud would be built from the Host header the client
    sent, so a token minted for another CDS service of the same EHR would pass: production refuses."""
    with pytest.raises(SettingsError, match="CDS_PUBLIC_BASE_URL"):
        auth_app(public_base_url=None)


def test_development_warns_when_the_audience_would_follow_the_host_header(
    auth_app: AuthAppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cds_service.http"):
        service = auth_app(public_base_url=None, environment="development")
    assert any("CDS_PUBLIC_BASE_URL" in record.getMessage() for record in caplog.records)
    foreign = service.token(VIEW, aud="https://other-cds.example" + VIEW)
    response = service.client.post(VIEW, json=view_body(service.app), base_url="https://other-cds.example",
                                   headers={"Authorization": f"Bearer {foreign}"})
    assert response.status_code == 200  # the documented weakness of running without CDS_PUBLIC_BASE_URL
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cds_service.http"):
        auth_app(public_base_url="https://cds.example.org")
    assert not any("CDS_PUBLIC_BASE_URL" in record.getMessage() for record in caplog.records)
