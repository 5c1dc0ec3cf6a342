"""Contract fuzzing: schemathesis generates requests from openapi.yaml and runs them in-process (WSGI).

Every operation of the contract is exercised against three configurations of the service:

* ``default`` — development settings, 412 when prefetch data is missing (what most calls hit);
* ``partial`` — ``CDS_ON_MISSING_DATA=partial``: generated prefetch content reaches the clinical
  rules instead of stopping at the 412, so the rules are fuzzed too;
* ``auth``    — ``CDS_AUTH_MODE=required``: every ``/cds-services`` call without a valid JWT must be a
  conforming 401.

Checks on every response: no 5xx (``not_a_server_error``), documented status code, documented content
type, response body valid against the documented schema, plus our own: 200 hook answers valid against
the strict CDS Hooks response schema, error bodies are JSON naming the problem, security headers on
every response, no stack trace or server version anywhere.

Generation is derandomized (same cases every run) and bounded (``MAX_EXAMPLES`` per operation per
phase); the whole module runs in well under a minute on two cores. Figures: docs/security.md, "Fuzzing".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_service.app import create_app
from cds_service.protocol import response_errors
from cds_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 100
CONFIGS = ("default", "partial", "auth")
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "content-security-policy", "x-request-id")
LEAK_MARKERS = ("Traceback", 'File "', "Werkzeug", "gunicorn", "Python/", "CPython")

schema = schemathesis.openapi.from_path(REPO / "openapi.yaml")
HOOK_OF_SERVICE = {
    "lbp-patient-view": "patient-view",
    "lbp-imaging-order-select": "order-select",
    "lbp-imaging-order-sign": "order-sign",
}
#: (configuration, operation, status) → number of calls; printed at the end of the module (-s).
CALLS: Counter[tuple[str, str, int]] = Counter()


def _header(response: schemathesis.Response, name: str) -> str:
    values = response.headers.get(name) or []
    return values[0] if values else ""


def service_invariants(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """What openapi.yaml cannot express: strict CDS Hooks responses, JSON errors, headers, no leaks."""
    for name in SECURITY_HEADERS:
        assert _header(response, name), f"missing security header {name}"
    text = response.content.decode("utf-8", "replace")
    for marker in LEAK_MARKERS:
        assert marker not in text, f"response leaks {marker!r}"
    for name in ("server", "x-powered-by"):
        value = _header(response, name)
        assert not any(m.lower() in value.lower() for m in ("werkzeug", "python", "gunicorn", "flask")), value
    path = case.operation.path
    if path.startswith("/cds-services") and response.status_code >= 400 and response.content:
        body = json.loads(response.content)
        assert isinstance(body, dict) and body.get("error") and body.get("message"), body
    if case.operation.label == "POST /cds-services/{id}" and response.status_code == 200:
        problems = response_errors(json.loads(response.content))
        assert not problems, problems
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    service_invariants,
]


@schema.hook("map_case")
def align_hook_with_service(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """openapi.yaml cannot tie the body's ``hook`` to the path's service id, so two calls in three would
    stop at 400 wrong-hook. Valid bodies get the hook of the service called, so they reach prefetch
    resolution and (``partial``) the rules; negative cases are left exactly as generated."""
    hook = HOOK_OF_SERVICE.get(str((case.path_parameters or {}).get("id")))
    mode = case.meta.generation.mode if case.meta is not None else None
    if (
        context.operation is not None
        and context.operation.label == "POST /cds-services/{id}"
        and hook
        and isinstance(case.body, dict)
        and case.body.get("hook") in HOOK_OF_SERVICE.values()
        and str(mode) == "positive"
    ):
        case.body["hook"] = hook
    return case


def _settings(tmp: Path, config: str) -> Settings:
    base: dict[str, Any] = {
        "environment": "development",
        "data_dir": tmp,
        "auth_mode": "off",
        "log_level": "CRITICAL",
        "fhir_timeout_seconds": 0.5,
        "deadline_seconds": 1.0,
        # Generated fhirServer URLs must never reach a real local service: the only allowed FHIR
        # server is a closed port (connection refused at once).
        "fhir_allowlist": ("http://127.0.0.1:9",),
        "auto_migrate": True,
    }
    if config == "partial":
        base["on_missing_data"] = "partial"
    if config == "auth":
        issuers = tmp / "issuers.yaml"
        jwks = tmp / "jwks.json"
        jwks.write_text(json.dumps({"keys": [_public_jwk()]}), encoding="utf-8")
        issuers.write_text(
            "issuers:\n  - iss: https://ehr.example.org\n    jwks_file: jwks.json\n", encoding="utf-8"
        )
        base.update(
            environment="production", auth_mode="required", issuers_file=issuers, public_base_url="http://localhost"
        )
    return Settings(**base).validate()


def _public_jwk() -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    jwk.update({"kid": "fuzz", "alg": "ES384", "use": "sig"})
    return jwk


@pytest.fixture(scope="module", params=CONFIGS)
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Flask]]:
    config: str = request.param
    app = create_app(_settings(tmp_path_factory.mktemp(f"fuzz-{config}"), config))
    yield config, app
    app.extensions["cds"].fhir.close()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    per_operation: Counter[tuple[str, str]] = Counter()
    for (config, label, _status), count in CALLS.items():
        per_operation[(config, label)] += count
    print("\ncontract fuzzing: calls per configuration and operation")
    for (config, label), count in sorted(per_operation.items()):
        statuses = {s: n for (c, lab, s), n in sorted(CALLS.items()) if c == config and lab == label}
        print(f"  {config:8} {label:36} {count:5}  {statuses}")
    print(f"  total {sum(CALLS.values())}")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_contract(case: schemathesis.Case, fuzz_target: tuple[str, Flask]) -> None:
    config, app = fuzz_target
    response = case.call(app=app)
    CALLS[(config, case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    if config == "auth" and case.operation.path.startswith("/cds-services") and case.method != "OPTIONS":
        # no token was sent: every CDS Hooks call is refused before routing or body parsing (405 aside)
        assert response.status_code in (401, 405), response.status_code
