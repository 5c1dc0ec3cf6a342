"""The EHR harness's SMART v2 scope and patient-compartment checks (pure functions)."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from cds_service.tooling.ehr_scopes import scope_allows, scope_refusal

SCOPE = "launch openid patient/Patient.r patient/Condition.rs patient/QuestionnaireResponse.c"


def request(method: str, path: str, body: dict | None = None) -> Request:
    data = json.dumps(body).encode() if body is not None else None
    return Request(EnvironBuilder(method=method, path=f"/fhir{path}", data=data).get_environ())


@pytest.mark.parametrize(
    ("scope", "rtype", "needed", "allowed"),
    [
        ("patient/Condition.rs", "Condition", "s", True),
        ("patient/Condition.rs", "Condition", "c", False),
        ("patient/Condition.rs", "Observation", "s", False),
        ("patient/*.cruds", "Observation", "d", True),
        ("patient/Observation.read", "Observation", "s", True),  # v1 spelling
        ("patient/Observation.read", "Observation", "c", False),
        ("patient/QuestionnaireResponse.write", "QuestionnaireResponse", "c", True),
        ("user/Observation.rs", "Observation", "r", False),  # only patient-level here
        ("launch", "Patient", "r", False),
    ],
)
def test_scope_allows(scope: str, rtype: str, needed: str, allowed: bool) -> None:
    assert scope_allows(scope, rtype, needed) is allowed


def test_searches_must_name_the_tokens_patient_only() -> None:
    assert scope_refusal(SCOPE, "p1", request("GET", "/Condition?patient=p1"), "/Condition") is None
    assert scope_refusal(SCOPE, "p1", request("GET", "/Condition?subject=Patient/p1"), "/Condition") is None
    assert scope_refusal(SCOPE, "p1", request("GET", "/Condition?patient=p2"), "/Condition")
    assert scope_refusal(SCOPE, "p1", request("GET", "/Condition?patient=p1&patient=p2"), "/Condition")
    assert scope_refusal(SCOPE, "p1", request("GET", "/Condition"), "/Condition")
    assert scope_refusal(SCOPE, "p1", request("GET", "/Observation?patient=p1"), "/Observation")  # no scope


def test_reads_and_writes() -> None:
    assert scope_refusal(SCOPE, "p1", request("GET", "/Patient/p1"), "/Patient/p1") is None
    assert scope_refusal(SCOPE, "p1", request("GET", "/Patient/p2"), "/Patient/p2")
    own = {"resourceType": "QuestionnaireResponse", "subject": {"reference": "Patient/p1"}}
    other = {**own, "subject": {"reference": "Patient/p2"}}
    path = "/QuestionnaireResponse"
    assert scope_refusal(SCOPE, "p1", request("POST", path, own), path) is None
    assert scope_refusal(SCOPE, "p1", request("POST", path, other), path)
    assert scope_refusal(SCOPE, "p1", request("PUT", path + "/x", own), path + "/x")  # .c only: no update
    assert scope_refusal(SCOPE, "p1", request("GET", "/"), "/")
