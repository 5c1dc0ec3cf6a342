"""No patient data and no credential ever reaches the logs — checked end to end, at DEBUG.

Every fixture patient goes through every hook twice: once with the full prefetch (built with
``prefetch_for``) and once with only ``fhirServer`` + ``fhirAuthorization``, the data served by a local
FHIR server, so the fetch path (thread pool, paging, the FHIR client's own log lines) runs too. Client
authentication is on, so every call also carries a CDS client JWT.

Before use, each patient is given extra identifying data (canaries): an MRN, a phone number, an
address, narrative text, notes and ``code.text`` on every clinical resource. Card texts may quote
``code.text``: the response is allowed to carry it, the log never.

The log is the app's own pipeline (``configure_logging``: JSON formatter, field allowlist, redaction)
written to a buffer, at DEBUG. Asserted absent: both tokens (and any ``eyJ`` JWT prefix or ``Bearer``),
patient names, identifiers, birth dates, every resource id (patient id included: FHIR URLs carry
them), every canary, and any serialised resource (``resourceType``).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hookreq import lumbar_mri

from cds_service.app import create_app
from cds_service.logging_setup import configure_logging
from cds_service.registry import SERVICE_IDS
from cds_service.tooling.fixtures import (
    HOOKS,
    FixtureSpec,
    LoadedFixture,
    build_request,
    load_manifest,
    service_templates,
)

from .conftest import SigningKey, claims_for
from .fhir_recorder import FhirRecorder, start_recorder, stop_recorder

ISS = "https://ehr.example.org"
MANIFEST = load_manifest()
TEMPLATES = service_templates()
NARRATIVE_TYPES = ("Condition", "Observation", "Procedure", "MedicationRequest", "ServiceRequest",
                   "FamilyMemberHistory", "DiagnosticReport", "ImagingStudy", "QuestionnaireResponse")


@dataclass
class Harness:
    app: Flask
    client: FlaskClient
    key: SigningKey
    fhir: FhirRecorder
    log: io.StringIO


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, SigningKey]) -> Iterator[Harness]:
    from conftest import make_settings

    tmp = tmp_path_factory.mktemp("phi-logging")
    (tmp / "jwks.json").write_text(json.dumps({"keys": [keys["ES384"].public_jwk]}), encoding="utf-8")
    (tmp / "issuers.yaml").write_text(
        yaml.safe_dump({"issuers": [{"iss": ISS, "jwks_file": "jwks.json"}]}), encoding="utf-8"
    )
    app = create_app(make_settings(
        tmp, environment="production", auth_mode="required", issuers_file=tmp / "issuers.yaml",
        public_base_url="http://localhost",
        log_level="DEBUG", patient_hash_key="phi-logging-test-key",
    ))
    server, recorder = start_recorder()
    root = logging.getLogger()
    level = root.level
    # The local FHIR server is test equipment in this process: its access log (logger "werkzeug",
    # request lines with the patient id in the query) is the EHR side, not the service's log.
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    yield Harness(app, app.test_client(), keys["ES384"], recorder, io.StringIO())
    stop_recorder(server)
    app.extensions["cds"].fhir.close()
    for handler in list(root.handlers):
        if getattr(handler, "_cds_service_json_handler", False):
            root.removeHandler(handler)
    root.setLevel(level)
    werkzeug_log.setLevel(werkzeug_level)
    logging.captureWarnings(False)


def _canaries(fixture: LoadedFixture) -> tuple[LoadedFixture, list[str]]:
    """A copy of the fixture with identifying text added to every resource; returns the canaries."""
    tag = secrets.token_hex(4)
    planted: list[str] = []

    def plant(label: str) -> str:
        value = f"{label}{tag}{len(planted)}"
        planted.append(value)
        return value

    bundle = copy.deepcopy(fixture.bundle)
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        kind = resource.get("resourceType")
        if kind == "Patient":
            resource["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": plant("MRN")}]
            resource["telecom"] = [{"system": "phone", "value": "+44 20 7946 " + str(1000 + len(planted))}]
            planted.append(resource["telecom"][0]["value"])
            resource["address"] = [{"line": [plant("Canary Street ")], "city": plant("Canaryton")}]
        elif kind in NARRATIVE_TYPES:
            resource["identifier"] = [{"value": plant("ACC")}]
            resource["text"] = {"status": "generated",
                                "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{plant("NARRATIVE")}</div>'}
            if kind in ("Condition", "Observation", "Procedure", "MedicationRequest"):
                resource["note"] = [{"text": plant("NOTE")}]
            if isinstance(resource.get("code"), dict):
                resource["code"]["text"] = plant("CODETEXT")
    # Every patient goes through the order hooks: one without draft orders gets a lumbar MRI order.
    orders = copy.deepcopy(fixture.orders) or [lumbar_mri(f"{fixture.spec.slug[:50]}-mri", fixture.patient_id)]
    for order in orders:
        if isinstance(order.get("code"), dict):
            order["code"]["text"] = plant("ORDERTEXT")  # quoted by imaging cards ("Order reviewed: …")
    copy_ = LoadedFixture(spec=fixture.spec, bundle=bundle, orders=orders)
    return copy_, planted


def _selections(fixture: LoadedFixture) -> list[str]:
    return list(fixture.spec.selected) or [f"ServiceRequest/{order['id']}" for order in fixture.orders]


def _forbidden(fixture: LoadedFixture, planted: list[str], tokens: list[str]) -> dict[str, str]:
    """Every string that must not appear in the log, with why."""
    forbidden = {value: "canary" for value in planted}
    for token in tokens:
        forbidden[token] = "token"
        for segment in token.split("."):
            if len(segment) >= 8:
                forbidden[segment] = "token segment"
    for resource in fixture.resources + fixture.orders:
        if isinstance(resource.get("id"), str):
            forbidden[resource["id"]] = f"{resource['resourceType']} id"
        for ident in resource.get("identifier") or []:
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                forbidden[ident["value"]] = "identifier"
        for name in resource.get("name") or []:
            if not isinstance(name, dict):
                continue
            parts = [name.get("family"), *(name.get("given") or []), name.get("text")]
            for part in parts:
                if isinstance(part, str) and len(part) >= 3:
                    forbidden[part] = "name"
                    forbidden.update({word: "name" for word in part.split() if len(word) >= 3})
        if isinstance(resource.get("birthDate"), str):
            forbidden[resource["birthDate"]] = "birth date"
    return forbidden


def _token(harness: Harness, path: str) -> str:
    return harness.key.sign(claims_for(iss=ISS, aud=f"http://localhost{path}", jti=str(uuid.uuid4())))


@pytest.mark.parametrize("spec", MANIFEST.fixtures, ids=[spec.slug for spec in MANIFEST.fixtures])
def test_no_patient_data_or_credential_in_the_logs(harness: Harness, spec: FixtureSpec) -> None:
    fixture, planted = _canaries(spec.load(shift_to=date.today()))
    harness.fhir.serve(fixture.resources)
    harness.fhir.requests.clear()
    log = io.StringIO()
    configure_logging("DEBUG", stream=log)
    tokens: list[str] = []
    calls = 0
    for index, hook in enumerate(HOOKS):
        path = f"/cds-services/{SERVICE_IDS[hook]}"
        for with_prefetch in (True, False):
            body = build_request(fixture, hook, TEMPLATES[hook], with_prefetch=with_prefetch,
                                 fhir_server=harness.fhir.base, selections=_selections(fixture))
            if not with_prefetch:
                # an opaque token on one hook, a JWT-shaped (SMART) token on the others
                access = (f"opaque-fhir-token-{secrets.token_hex(8)}" if index == 0 else
                          harness.key.sign({"sub": "fhir", "jti": secrets.token_hex(6)}))
                body["fhirAuthorization"]["access_token"] = access
                tokens.append(access)
            client_jwt = _token(harness, path)
            tokens.append(client_jwt)
            response = harness.client.post(path, json=body, headers={"Authorization": f"Bearer {client_jwt}"})
            calls += 1
            assert response.status_code == 200, (hook, with_prefetch, response.get_json())
    assert harness.fhir.requests, "the fetch path did not run"
    assert all(r.authorization and r.authorization.startswith("Bearer ") for r in harness.fhir.requests)

    output = log.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    assert sum(1 for line in lines if line["message"] == "request") == calls, "log capture is incomplete"
    assert any(line["level"] == "DEBUG" for line in lines), "DEBUG lines were not captured"
    leaks = {value: why for value, why in _forbidden(fixture, planted, tokens).items() if value in output}
    assert not leaks, f"found in the log: {leaks}"
    for marker in ("eyJ", "Bearer", "resourceType", "birthDate", '"family"', '"given"', "<div"):
        assert marker not in output, marker


def test_the_canaries_reach_the_cards_so_the_log_check_is_meaningful(harness: Harness) -> None:
    """Card texts quote code.text: proves the canaries travel through the service and are not logged."""
    spec = MANIFEST.get("acute-nonspecific-mri-2wk")
    fixture, planted = _canaries(spec.load(shift_to=date.today()))
    body = build_request(fixture, "order-select", TEMPLATES["order-select"])
    path = "/cds-services/lbp-imaging-order-select"
    log = io.StringIO()
    configure_logging("DEBUG", stream=log)
    response = harness.client.post(path, json=body, headers={"Authorization": f"Bearer {_token(harness, path)}"})
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    quoted = [value for value in planted if value in text]
    assert quoted, "no canary reached a card: the end-to-end check would prove little"
    assert not [value for value in quoted if value in log.getvalue()]


def test_client_supplied_ids_carrying_patient_data_are_not_logged(harness: Harness) -> None:
    """hookInstance and feedback card ids are logged, but only when they are UUIDs as the spec says."""
    spec = MANIFEST.get("axspa-four-criteria")
    body = build_request(spec.load(shift_to=date.today()), "patient-view", TEMPLATES["patient-view"])
    body["hookInstance"] = "Pax Pine MRN 99812 born 1997-05-02"
    feedback = {"feedback": [{"card": "Pax Pine 1997-05-02", "outcome": "overridden",
                              "outcomeTimestamp": "2026-01-01T10:00:00Z",
                              "overrideReason": {"userComment": "Pax Pine said no, MRN 99812"}}]}
    log = io.StringIO()
    configure_logging("DEBUG", stream=log)
    for path, payload in (("/cds-services/lbp-patient-view", body),
                          ("/cds-services/lbp-patient-view/feedback", feedback)):
        response = harness.client.post(path, json=payload,
                                       headers={"Authorization": f"Bearer {_token(harness, path)}"})
        assert response.status_code == 200, response.get_json()
    output = log.getvalue()
    for value in ("Pax", "Pine", "99812", "1997-05-02"):
        assert value not in output
    assert "[not-a-uuid]" in output


def test_unhandled_errors_log_type_and_frames_but_not_the_message(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    services = harness.app.extensions["cds"].services
    service = services["lbp-patient-view"]

    def explode(_inp: Any) -> list[Any]:
        raise ValueError("birthDate 1961-02-03 of Jane Canary is odd")

    monkeypatch.setitem(services, "lbp-patient-view", dataclasses.replace(service, evaluate=explode))
    spec = MANIFEST.get("axspa-four-criteria")
    body = build_request(spec.load(shift_to=date.today()), "patient-view", TEMPLATES["patient-view"])
    path = "/cds-services/lbp-patient-view"
    log = io.StringIO()
    configure_logging("DEBUG", stream=log)
    response = harness.client.post(path, json=body, headers={"Authorization": f"Bearer {_token(harness, path)}"})
    assert response.status_code == 500
    assert "Jane" not in response.get_data(as_text=True)
    error = next(json.loads(line) for line in log.getvalue().splitlines() if "unhandled error" in line)
    assert error["error_type"] == "ValueError" and error["exc_type"] == "ValueError"
    assert any("explode" in frame for frame in error["stack"])  # where it failed, for the on-call engineer
    assert "Jane" not in log.getvalue() and "1961-02-03" not in log.getvalue()
