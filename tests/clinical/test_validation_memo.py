"""Reusing validated CodeableConcepts never changes a verdict: differential against full validation.

validation.validate hands each resource's CodeableConcepts to the resource model as instances
validated once per content (validation.py). Here every resource of every fixture chart, and thousands
of broken variants of them (bad codes and systems, nulls in lists, wrong types, unknown elements,
two choice values, missing required elements, in the concepts and around them), are validated twice
over -- the second pass answered from the memo -- and each verdict, error text included, must be the
one of ``Model.model_validate`` on the resource as written.
"""

from __future__ import annotations

import copy
import random
from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from cds_service.clinical.facts import validation
from cds_service.clinical.facts.validation import validate
from cds_service.tooling.fixtures import load_manifest


def _full(resource: dict[str, Any]) -> str | None:
    """What validate() answered before the memo: the model on the resource exactly as written."""
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception as exc:  # noqa: BLE001 - mirrors validate()
        return validation.first_error(exc)
    return None


def _chart_resources() -> list[dict[str, Any]]:
    out = []
    for spec in load_manifest().fixtures:
        fixture = spec.load(shift_to=date(2026, 11, 30))
        out.extend(r for r in fixture.resources if r.get("resourceType") != "Bundle")
        out.extend(fixture.orders)
    return out


RESOURCES = _chart_resources()

_BAD_CONCEPTS: list[Any] = [
    None, "8310-5", 42, [], {}, {"coding": None}, {"coding": [None]}, {"coding": "x"}, {"coding": [{}]},
    {"coding": [{"system": "not a uri with spaces", "code": "x"}]},
    {"coding": [{"system": "http://loinc.org", "code": " leading-space"}]},
    {"coding": [{"system": "http://loinc.org", "code": "8310-5", "userSelected": "yes"}]},
    {"coding": [{"system": "http://loinc.org", "code": "8310-5", "unknownElement": 1}]},
    {"text": ""}, {"text": 7}, {"text": "Body temperature", "extra": True},
    {"coding": [{"system": "http://loinc.org", "code": "8310-5"}], "id": "has spaces"},
    {"coding": [{"system": "http://loinc.org", "code": "8310-5"}, None]},
    {"extension": [{"url": "http://example.org/x"}]},
    {"extension": [{"url": "http://example.org/x", "valueString": "a", "valueBoolean": True}]},
]


def _variants(resource: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The resource as written and broken versions of it, in and around its coded elements."""
    out = [resource]
    concept_keys = [k for k, _ in validation._concept_fields(get_fhir_model_class(resource["resourceType"]))]
    for key in concept_keys:
        for bad in rng.sample(_BAD_CONCEPTS, 6):
            changed = copy.deepcopy(resource)
            current = changed.get(key)
            changed[key] = [current, bad] if isinstance(current, list) else bad
            out.append(changed)
    for key in list(resource)[:6]:
        if key == "resourceType":
            continue
        dropped = copy.deepcopy(resource)
        del dropped[key]  # a required element missing, or an optional one gone
        out.append(dropped)
    wrong = copy.deepcopy(resource)
    wrong[rng.choice([k for k in resource if k != "resourceType"])] = rng.choice([None, 3, "x", [None], {"a": 1}])
    out.append(wrong)
    extra = copy.deepcopy(resource)
    extra["notAnElement"] = {"coding": []}
    out.append(extra)
    if resource["resourceType"] == "Observation":
        choice = copy.deepcopy(resource)
        choice["valueString"] = "both"  # value[x] twice when the Observation already has a value
        choice["effectivePeriod"] = {"start": "2026-01-01"}
        out.append(choice)
    return out


def test_every_fixture_resource_gets_the_full_validations_verdict() -> None:
    validation._memo.clear()
    for _ in range(2):  # the second pass answers the concepts from the memo
        for resource in RESOURCES:
            assert validate(resource) == _full(resource), resource.get("id")


def test_broken_variants_get_the_full_validations_verdict_and_error() -> None:
    rng = random.Random(16)
    validation._memo.clear()
    cases = [v for r in RESOURCES for v in _variants(r, rng)]
    assert len(cases) > 5_000
    refused = 0
    for _ in range(2):
        for case in cases:
            expected = _full(case)
            assert validate(case) == expected, (case.get("resourceType"), case.get("id"), expected)
            refused += expected is not None
    assert refused > 1_000  # the variants do reach the refusals


def test_an_invalid_concept_is_never_kept_and_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    validation._memo.clear()
    bad = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "279039007", "userSelected": "maybe"}]}}
    assert validate(bad) is not None
    assert validation._memo == {}
    monkeypatch.setattr(validation, "MEMO_MAX", 3)
    for n in range(10):
        validate({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"},
                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": str(100000 + n)}]}})
        assert len(validation._memo) <= 3


def test_a_concept_with_free_text_an_id_or_extensions_is_never_kept() -> None:
    validation._memo.clear()
    coding = {"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}
    for concept in ({"coding": [coding], "text": "back pain since the fall at home"},
                    {"coding": [coding], "id": "c"},
                    {"coding": [{**coding, "extension": [{"url": "http://example.org/x", "valueString": "y"}]}]},
                    {"text": "back pain"}):
        condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"}, "code": concept}
        assert validate(condition) is None
    assert validation._memo == {}
    validate({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"},
              "code": {"coding": [coding]}})
    assert len(validation._memo) == 1


def test_the_concept_elements_found_are_those_of_the_model() -> None:
    fields = dict(validation._concept_fields(get_fhir_model_class("Observation")))
    assert fields["code"] is False and fields["category"] is True and fields["valueCodeableConcept"] is False
    assert "subject" not in fields and "valueQuantity" not in fields
    procedure = dict(validation._concept_fields(get_fhir_model_class("Procedure")))
    assert procedure["category"] is False  # one concept on Procedure, a list on Observation
