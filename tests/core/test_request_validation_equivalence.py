"""The prefetch values are checked in Python instead of through jsonschema (issue 16): the answer to
any request must be what the full JSON Schema (defs.json#/$defs/prefetchValue) gives — same field,
same description — for valid and invalid prefetch shapes alike, also when the envelope is wrong too."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hookreq import hook_request, lumbar_mri
from jsonschema import Draft202012Validator

from cds_service.protocol import (
    SCHEMA_NAMES,
    RequestError,
    _describe,
    _inline_refs,
    _path,
    _python_anchors,
    load_schema,
    validate_request,
    validators,
)

WRONG = [None, True, 0, 1.5, "x", [], [1], {}, {"resourceType": "Bundle"}]


@pytest.fixture(scope="module")
def reference() -> Draft202012Validator:
    """The request schema as written on disk: prefetch values checked by jsonschema itself."""
    raw = {name: _python_anchors(load_schema(name)) for name in SCHEMA_NAMES}
    schema = _inline_refs("request", raw)
    checker = validators()["request"].format_checker
    return Draft202012Validator(schema, format_checker=checker)


def _reference_problem(validator: Draft202012Validator, body: dict[str, Any]) -> str | None:
    errors = sorted(validator.iter_errors(body), key=lambda e: (len(list(e.absolute_path)), str(e.path)))
    if not errors:
        return None
    error = errors[0]
    while error.context:
        error = sorted(error.context, key=lambda e: -len(list(e.absolute_path)))[0]
    return f"{_path(error, '$')} {_describe(error)}"


def _ours(body: dict[str, Any]) -> str | None:
    try:
        validate_request(body, body.get("hook") if isinstance(body.get("hook"), str) else "patient-view")
    except RequestError as exc:
        return exc.message if exc.error != "wrong-hook" else None
    return None


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources],
            "link": [{"relation": "self", "url": "http://x/Condition?patient=p1"}]}


def _base() -> dict[str, Any]:
    body = hook_request("order-select", orders=[lumbar_mri()], selections=["ServiceRequest/order-1"])
    body["prefetch"] = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "conditions": _bundle({"resourceType": "Condition", "id": "c1"}),
        "findings": _bundle(),
        "crp": None,
    }
    return body


def _mutations(rng: random.Random) -> list[dict[str, Any]]:
    bodies = []
    for _ in range(400):
        body = _base()
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(["patient", "conditions", "findings", "crp", "new"])
            where = rng.choice(["value", "link", "link0", "entry", "resourceType", "envelope"])
            value = copy.deepcopy(rng.choice(WRONG))
            prefetch = body["prefetch"] if isinstance(body.get("prefetch"), dict) else {}
            if where == "value":
                prefetch[key] = value
            elif where == "resourceType" and isinstance(prefetch.get(key), dict):
                prefetch[key]["resourceType"] = rng.choice(["Bundle", "Patient", 3, None])
            elif where in ("link", "entry") and isinstance(prefetch.get(key), dict):
                prefetch[key][where] = value
            elif where == "link0" and isinstance(prefetch.get(key), dict):
                prefetch[key]["link"] = [{"relation": "self"}, value]
            elif where == "envelope":
                field = rng.choice(["hookInstance", "fhirServer", "context", "prefetch"])
                body[field] = value
        bodies.append(body)
    return bodies


def test_every_mutation_gets_the_full_schemas_answer(reference: Draft202012Validator) -> None:
    rng = random.Random(16)
    bodies = _mutations(rng)
    invalid = 0
    for body in bodies:
        expected = _reference_problem(reference, body)
        invalid += expected is not None
        ours = _ours(body)
        if expected is not None:
            assert ours == expected, body
    assert invalid > 200  # the mutations really exercise the error paths


def test_valid_prefetch_shapes_pass() -> None:
    body = _base()
    body["prefetch"]["conditions"]["link"] = []
    body["prefetch"]["findings"] = {"resourceType": "OperationOutcome", "issue": []}
    validate_request(body, "order-select")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.update(crp="Observation/1"), "$.prefetch.crp"),
        (lambda p: p["conditions"].update(link={}), "$.prefetch.conditions.link"),
        (lambda p: p["conditions"].update(link=[{}, 3]), "$.prefetch.conditions.link[1]"),
        (lambda p: p["findings"].update(entry={}), "$.prefetch.findings.entry"),
    ],
)
def test_malformed_prefetch_is_refused_naming_the_field(change: Any, field: str) -> None:
    body = _base()
    change(body["prefetch"])
    with pytest.raises(RequestError) as caught:
        validate_request(body, "order-select")
    assert caught.value.status == 400
    assert caught.value.field == field
