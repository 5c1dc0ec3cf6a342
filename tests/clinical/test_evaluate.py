"""The evaluate() entry point: hook dispatch, params contract, partial records, robustness."""

from __future__ import annotations

from datetime import datetime

import pytest

from cds_service.clinical import evaluate
from cds_service.clinical.model import EvaluationInput

from .builders import (
    LOINC,
    NOW,
    condition,
    crp,
    days_ago,
    hla_b27,
    lbp,
    mri_order,
    observation,
    patient,
    questionnaire_response,
    record,
    temperature,
)
from .conftest import topics

BASE_KEYS = {
    "partial",
    "missing",
    "skipped_resources",
    "patient_age",
    "patient_sex",
    "age_over_50",
    "duration_days",
    "duration_weeks",
    "onset_date",
    "onset_source",
    "onset_from_recorded_date",
    "onset_age",
    "radicular",
}


def test_unknown_hook_gives_nothing(run) -> None:
    assert run("encounter-start", record(lbp(10), condition("192970008"))) == []


def test_order_hooks_give_only_imaging_cards(run) -> None:
    rec = record(lbp(10), condition("192970008"), draft_orders=(mri_order(rid="o1"),))
    decisions = run("order-sign", rec)
    assert [(d.topic, d.order_reference) for d in decisions] == [("cauda-equina", "ServiceRequest/o1")]


def test_every_decision_has_base_params_and_citations(run) -> None:
    recs = [
        record(lbp(10)),
        record(lbp(10), condition("363346000")),
        record(lbp(10), draft_orders=(mri_order(rid="o1"),)),
    ]
    for rec in recs:
        for hook in ("patient-view", "order-sign"):
            for decision in run(hook, rec):
                assert BASE_KEYS <= set(decision.params), decision.topic
                assert decision.citations and all(c.title and c.version for c in decision.citations)
                assert decision.criteria


def test_partial_record_is_reported(run) -> None:
    decisions = run("patient-view", record(lbp(10), missing=("crp", "conditions")))
    assert decisions[0].params["partial"] is True
    assert decisions[0].params["missing"] == ["crp", "conditions"]


def test_skipped_resources_are_reported_on_cards(run) -> None:
    bad = observation("1988-5", effective=days_ago(2))
    bad["valueQuantity"] = {"value": "twelve"}
    decisions = run("patient-view", record(lbp(10), bad))
    assert decisions[0].params["skipped_resources"][0].startswith("Observation/")


@pytest.mark.parametrize(
    "resources",
    [
        (),
        (lbp(None),),
        (condition("279039007", clinical=None),),
        (observation("8310-5", effective=days_ago(1)),),  # temperature without value
        (crp(12.0, "weird-unit"),),
        (hla_b27(),),
        (temperature(39.0, "??"),),
        (questionnaire_response({k: ("valueString", "yes") for k in ("fever", "buttock-pain", "pain-onset-date")}),),
        ({"resourceType": "Observation"},),
        ({"resourceType": "Condition", "code": "not a concept"},),
        ({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {}},),
        (None, 42, "text", {}),
        ({"resourceType": "Observation", "id": "x", "status": "final", "code": {"coding": [{"system": LOINC}]}},),
    ],
)
@pytest.mark.parametrize("hook", ["patient-view", "order-sign", "order-select"])
def test_robust_to_odd_data(knowledge, hook, resources) -> None:
    rec = record(
        lbp(20),
        *resources,
        pat=patient(None),
        draft_orders=(mri_order(rid="o1"), {"junk": 1}, None),
        selections=("ServiceRequest/o1",),
    )
    decisions = evaluate(EvaluationInput(hook=hook, record=rec, now=NOW), knowledge)
    assert isinstance(decisions, list)


def test_naive_now_is_accepted(run) -> None:
    assert topics(run("patient-view", record(lbp(10)), now=datetime(2025, 6, 15, 9, 0))) == ["self-management"]


def test_evaluation_is_deterministic(run) -> None:
    rec = record(
        lbp(400),
        questionnaire_response(
            {
                link: True
                for link in (
                    "night-waking-second-half",
                    "buttock-pain",
                    "improves-with-movement",
                    "nsaid-response-within-48h",
                )
            }
        ),
        pat=patient("1990-01-01"),
    )
    assert run("patient-view", rec) == run("patient-view", rec)
