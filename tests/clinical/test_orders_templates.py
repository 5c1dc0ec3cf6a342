"""Template + field validation of created ServiceRequests is the full model validation, differentially.

orders.service_request validates the fixed part of a resource (its template) with the full
ServiceRequest model once per template, and the per-call values with validators built from the
model's own field annotations. Here every suggestion builder runs over a grid of per-call inputs
twice: with the current service_request and with a frozen copy of the one before (build the resource,
then ``ServiceRequest.model_validate`` it, here through ``orders._validate_fully``). Both must fail
(SuggestionBuildError naming the kind, or the same other exception) or both return the same resources.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from cds_service.clinical import orders
from cds_service.clinical.orders import (
    CATEGORY_LAB,
    CATEGORY_REFERRAL,
    PHYSIOTHERAPY_REFERRAL,
    STUDY_CODES,
    Code,
    OrderContext,
    SuggestionBuildError,
    clean_reason_codes,
)


def _old_service_request(
    ctx: OrderContext,
    code: Code,
    *,
    kind: str,
    intent: str,
    category: dict[str, str],
    reason_codes: Iterable[Any] = (),
    supporting_info: Iterable[str] = (),
    extra_codings: Iterable[Code] = (),
    source: str = "",
    note: str | None = None,
) -> dict[str, Any]:
    """service_request as it was (commit 75d776d), its model_validate call now ``_validate_fully``."""
    seed = f"{ctx.patient_id}|{kind}|{code.system}|{code.code}|{source}|{ctx.now.isoformat()}"
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(uuid.uuid5(orders._NAMESPACE, seed)),
        "status": "draft",
        "intent": intent,
        "category": [{"coding": [category]}],
        "priority": "routine",
        "code": {"coding": [code.coding()] + [c.coding() for c in extra_codings], "text": code.display},
        "subject": {"reference": f"Patient/{ctx.patient_id}"},
        "authoredOn": ctx.now.isoformat(),
    }
    if ctx.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{ctx.encounter_id.split('/')[-1]}"}
    if ctx.requester:
        resource["requester"] = ctx.requester
    reasons = clean_reason_codes(reason_codes, ctx.validated)
    if reasons:
        resource["reasonCode"] = reasons
    usable = (r.split("#")[0] for r in supporting_info if isinstance(r, str) and "/" in r and "?" not in r)
    refs = list(dict.fromkeys(usable))
    if refs:
        resource["supportingInfo"] = [{"reference": r} for r in refs]
    if note:
        resource["note"] = [{"text": note}]
    key = orders._json_key("ServiceRequest", resource)
    if key is None or key not in ctx.validated:
        try:
            orders._validate_fully(resource)
        except Exception as exc:  # noqa: BLE001
            raise SuggestionBuildError(f"{kind}: created ServiceRequest does not validate: {exc}") from exc
        if key is not None:
            ctx.validated.add(key)
    return resource


REASON = [{"coding": [{"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}]}]
Builder = Callable[[OrderContext, list[Any], list[Any]], Any]

BUILDERS: dict[str, Builder] = {
    "refer_physiotherapy": lambda c, r, s: orders.refer_physiotherapy(c, r, s),
    "refer_rheumatology": lambda c, r, s: orders.refer_rheumatology(c, r, s),
    "refer_rheumatology_with_labs": lambda c, r, s: orders.refer_rheumatology_with_labs(c, ["crp", "hla-b27"], r, s),
    "refer_rheumatology_with_crp": lambda c, r, s: orders.refer_rheumatology_with_labs(c, ["crp"], r, s),
    "order_hla_b27": lambda c, r, s: orders.order_hla_b27(c, r, s),
    "replace_with_sij_imaging": lambda c, r, s: orders.replace_with_sij_imaging(c, "ServiceRequest/o1", "MRI", r, s),
    **{
        f"replace_with_study[{study}]": (
            lambda c, r, s, study=study: orders.replace_with_study(c, "ServiceRequest/o1", "MRI", study, r)
        )
        for study in STUDY_CODES
    },
    **{f"lab_order[{lab}]": (lambda c, r, s, lab=lab: orders.lab_order(c, lab, r, s)) for lab in orders.LABS},
}

AWARE = datetime(2025, 6, 15, 10, 30, tzinfo=UTC)
PATIENTS = ["p1", "", " ", "p\n1", "\x01\x1f", "ü-患者", "x" * 5000, "../p1", "a/b", "\ud800"]
ENCOUNTERS = [None, "", "e1", "Encounter/e1", "Encounter/", "a/b/c", " ", "\n", "\x0b", "\ud800", "Encounter/\ud800"]
USERS = [
    None,
    "",
    "Practitioner/u1",
    "PractitionerRole/r1",
    "Patient/p1",
    "Practitioner/",
    "Practitioner/\n",
    "practitioner/u1",
    "PractitionerRole/\ud800",
]
NOWS = [
    AWARE,
    AWARE.replace(microsecond=123456),
    AWARE.astimezone(timezone(timedelta(hours=5, minutes=30))),
    AWARE.astimezone(timezone(timedelta(hours=-14))),
    AWARE.astimezone(timezone(timedelta(hours=14, minutes=30))),  # beyond FHIR's +14:00: invalid
    AWARE.astimezone(timezone(timedelta(hours=1, seconds=30))),  # "+01:00:30": invalid
    AWARE.astimezone(timezone(timedelta(hours=23, minutes=59))),  # invalid
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    AWARE.replace(tzinfo=None),  # naive: invalid
    AWARE.replace(tzinfo=None, microsecond=1),  # naive: invalid
    date(2025, 6, 15),  # not a datetime: a FHIR date is a valid dateTime
]
SUPPORTING: list[list[Any]] = [
    [],
    ["Condition/c1"],
    ["QuestionnaireResponse/q1#a", "QuestionnaireResponse/q1#b", "Condition/c1", "Condition/c1"],
    ["   ", " / ", "\t/\t"],
    ["Condition/ "],
    ["Condition/c1\nx"],
    ["Condition/\x00\x07\x1b"],
    ["\x0b/\x0b"],
    ["Condition/" + "x" * 100_000],
    ["Condition/ü患者"],
    ["#frag", "/#frag", "Condition/c1#frag"],
    ["?q", "Condition/c1?q=1"],
    ["/"],
    ["Condition/\ud800"],
    [None, 3, b"Condition/c1", ("Condition/c1",)],
]
REASONS: list[list[Any]] = [
    [],
    REASON,
    [{"coding": "oops"}, "text", None, *REASON],
    [{"text": "\ud800"}, *REASON],
    [{"text": ""}],
    [{"coding": [{"system": "http://snomed.info/sct", "code": "two  spaces"}]}],
    [{"coding": [{"system": "http://snomed.info/sct", "code": "1", "extra": 1}]}],
    [{"text": "ok"}, {"text": "ok"}],
]
BASE = {
    "patient": "p1",
    "encounter": "e1",
    "user": "PractitionerRole/r1",
    "now": AWARE,
    "supporting": [],
    "reasons": [],
}
AXES = {
    "patient": PATIENTS,
    "encounter": ENCOUNTERS,
    "user": USERS,
    "now": NOWS,
    "supporting": SUPPORTING,
    "reasons": REASONS,
}


def _grid() -> list[dict[str, Any]]:
    """Each axis on its own against BASE, then a seeded sample of full combinations."""
    cases = [dict(BASE, **{axis: value}) for axis, values in AXES.items() for value in values]
    rng = random.Random(65)
    cases += [{axis: rng.choice(values) for axis, values in AXES.items()} for _ in range(150)]
    return cases


GRID = _grid()


def _outcome(build: Builder, case: dict[str, Any]) -> tuple[str, Any]:
    ctx = OrderContext(case["patient"], case["encounter"], case["user"], case["now"])
    try:
        result = build(ctx, list(case["reasons"]), list(case["supporting"]))
    except SuggestionBuildError as exc:
        return "SuggestionBuildError", str(exc).split(":")[0]  # the kind
    except Exception as exc:  # noqa: BLE001 - compared with the old code's outcome
        return "raised", type(exc).__name__
    return "ok", result


def _resources(result: Any) -> list[dict[str, Any]]:
    if isinstance(result, dict):
        return [result]
    return [a["resource"] for a in result.actions if a["type"] == "create"]


@pytest.mark.parametrize("name", BUILDERS)
def test_builder_matches_full_validation(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build = BUILDERS[name]
    monkeypatch.setattr(orders, "_VALID_TEMPLATES", set())  # the first case validates the template cold
    outcomes: dict[str, int] = {}
    for case in GRID:
        new = _outcome(build, case)
        with monkeypatch.context() as m:
            m.setattr(orders, "service_request", _old_service_request)
            old = _outcome(build, case)
        shown = {k: (v[:40] if isinstance(v, str) else v) for k, v in case.items() if k != "supporting"}
        assert new[0] == old[0], f"{name} {shown}: new {new} but full validation {old}"
        assert new[1] == old[1], f"{name} {shown}"  # same resources (or kind / exception type)
        if new[0] == "ok":
            for fresh, before in zip(_resources(new[1]), _resources(old[1]), strict=True):
                assert list(fresh) == list(before)  # same element order in the JSON too
                ServiceRequest.model_validate(fresh)
        outcomes[new[0]] = outcomes.get(new[0], 0) + 1
    # The grid reaches both sides: resources built, and resources the model rejects.
    assert outcomes.get("ok") and outcomes.get("SuggestionBuildError"), outcomes


def test_a_naive_now_drops_the_suggestion_naming_its_kind() -> None:
    naive = OrderContext("p1", "e1", "Practitioner/u1", AWARE.replace(tzinfo=None))
    with pytest.raises(SuggestionBuildError, match="^refer-physiotherapy: "):
        orders.refer_physiotherapy(naive, REASON)
    aware = orders.refer_physiotherapy(OrderContext("p1", "e1", "Practitioner/u1", AWARE), REASON)
    resource = {**aware.actions[0]["resource"], "authoredOn": naive.now.isoformat()}
    with pytest.raises(ValueError):  # pydantic's ValidationError
        orders._validate_fully(resource)


BAD_TEMPLATES = [
    {"code": Code(orders.SNOMED, "two  spaces", "x"), "intent": "order", "category": CATEGORY_LAB},
    {"code": PHYSIOTHERAPY_REFERRAL, "intent": "proposal ", "category": CATEGORY_REFERRAL},
    {"code": PHYSIOTHERAPY_REFERRAL, "intent": "proposal", "category": {**CATEGORY_REFERRAL, "extra": "x"}},
    {"code": PHYSIOTHERAPY_REFERRAL, "intent": "proposal", "category": {"code": 1}},
    {"code": Code(orders.SNOMED, "1", ""), "intent": "order", "category": CATEGORY_LAB},
]


@pytest.mark.parametrize("params", BAD_TEMPLATES)
def test_an_invalid_template_fails_every_time_like_full_validation(params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orders, "_VALID_TEMPLATES", set())
    ctx = OrderContext("p1", "e1", "Practitioner/u1", AWARE)
    with pytest.raises(SuggestionBuildError, match="^bad-kind: "):
        _old_service_request(ctx, kind="bad-kind", **params)
    for _ in range(2):  # a failure is not remembered
        with pytest.raises(SuggestionBuildError, match="^bad-kind: "):
            orders.service_request(OrderContext("p1", "e1", "Practitioner/u1", AWARE), kind="bad-kind", **params)
    assert orders._VALID_TEMPLATES == set()


def test_valid_templates_are_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orders, "_VALID_TEMPLATES", set())
    monkeypatch.setattr(orders, "_MAX_TEMPLATES", 3)
    ctx = OrderContext("p1", "e1", "Practitioner/u1", AWARE)
    for i in range(6):
        code = Code(orders.SNOMED, str(i), f"Code {i}")
        orders.service_request(ctx, code, kind="k", intent="order", category=CATEGORY_LAB)
    assert len(orders._VALID_TEMPLATES) == 3
    calls: list[dict[str, Any]] = []

    class Counting:
        @staticmethod
        def model_validate(data: dict[str, Any]) -> None:
            calls.append(data)

    monkeypatch.setattr(orders, "ServiceRequest", Counting)
    orders.service_request(ctx, Code(orders.SNOMED, "0", "Code 0"), kind="k", intent="order", category=CATEGORY_LAB)
    assert calls == []  # remembered: no full validation
    orders.service_request(ctx, Code(orders.SNOMED, "5", "Code 5"), kind="k", intent="order", category=CATEGORY_LAB)
    assert len(calls) == 1  # past the bound: validated each time


def test_the_models_have_only_the_checks_the_template_split_accounts_for() -> None:
    """orders._validate's docstring argues from these; a fhir.resources upgrade that adds one fails here."""
    for model in (ServiceRequest, Reference, Annotation, CodeableConcept):
        decorators = model.__pydantic_decorators__
        assert not decorators.field_validators and not decorators.validators and not decorators.root_validators
        assert set(decorators.model_validators) == {"reject_null_complex_elements", "validate_after_model_construction"}
        assert model.__init__ is FHIRAbstractModel.__init__
    assert ServiceRequest.model_construct().get_required_fields() == [
        ("intent", "intent__ext"),
        ("status", "status__ext"),
    ]
    assert Reference.model_construct().get_required_fields() == []
    assert Reference.model_construct().get_one_of_many_fields() == {}
    assert Annotation.model_construct().get_required_fields() == [("text", "text__ext")]
    choices = ServiceRequest.model_construct().get_one_of_many_fields()
    note_choices = Annotation.model_construct().get_one_of_many_fields()
    assert set(choices) == {"asNeeded", "occurrence", "quantity"} and set(note_choices) == {"author"}
    built = orders.replace_with_sij_imaging(
        OrderContext("p1", "e1", "Practitioner/u1", AWARE), "ServiceRequest/o1", "MRI", REASON, ["Condition/c1"]
    )
    for resource in _resources(built):
        assert not {f for fields in choices.values() for f in fields} & set(resource)
        assert resource["note"] and not {f for fields in note_choices.values() for f in fields} & set(
            resource["note"][0]
        )
