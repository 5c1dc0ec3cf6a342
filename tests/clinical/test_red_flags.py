"""Every red flag (positive / negative / boundary) and the patient-view red-flag and cauda-equina cards."""

from __future__ import annotations

import pytest

from cds_service.clinical.model import State

from .builders import (
    ICD,
    SNOMED,
    age_birth,
    condition,
    days_ago,
    lbp,
    observation,
    patient,
    questionnaire_response,
    record,
    temperature,
)
from .conftest import topics


def flag(facts, flag_id: str):
    return next(f for f in facts.red_flags if f.id == flag_id).finding


@pytest.mark.parametrize(
    ("flag_id", "resource"),
    [
        ("cauda-equina-syndrome", lambda: condition("192970008")),
        ("cauda-equina-syndrome", lambda: condition("G83.4", ICD)),
        ("urinary-retention", lambda: condition("R33.9", ICD)),
        ("urinary-retention", lambda: observation("267064002", SNOMED, effective=days_ago(1))),
        ("incontinence", lambda: condition("72042002", onset=days_ago(10))),
        ("saddle-anaesthesia", lambda: condition("449813001")),
        ("neurological-deficit", lambda: condition("6077001")),
        ("neurological-deficit", lambda: observation("26544005", SNOMED, effective=days_ago(3))),
        ("history-of-cancer", lambda: condition("C50.911", ICD, clinical="resolved")),
        ("history-of-cancer", lambda: condition("Z85.3", ICD)),
        ("unexplained-weight-loss", lambda: condition("R63.4", ICD)),
        ("fever", lambda: condition("386661006", onset=days_ago(3))),
        ("iv-drug-use", lambda: condition("228388006")),
        ("immunosuppression", lambda: condition("B20", ICD)),
        ("immunosuppression", lambda: condition("Z94.0", ICD)),
        ("significant-trauma", lambda: condition("S32.001A", ICD, onset=days_ago(10))),
        ("osteoporosis", lambda: condition("M81.0", ICD)),
        ("long-term-steroids", lambda: condition("Z79.52", ICD)),
    ],
)
def test_coded_red_flags(facts_of, flag_id, resource) -> None:
    res = resource()
    assert flag(facts_of(record(lbp(), res)), flag_id).met
    assert not flag(facts_of(record(lbp())), flag_id).met
    if res["resourceType"] == "Condition":
        res["verificationStatus"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}
            ]
        }
        assert not flag(facts_of(record(lbp(), res)), flag_id).met


@pytest.mark.parametrize(
    ("link_id", "flag_id"),
    [
        ("saddle-anaesthesia", "saddle-anaesthesia"),
        ("bladder-or-bowel-dysfunction", "bladder-or-bowel-dysfunction"),
        ("progressive-leg-weakness", "progressive-leg-weakness"),
        ("fever", "fever"),
        ("unexplained-weight-loss", "unexplained-weight-loss"),
        ("history-of-cancer", "history-of-cancer"),
        ("iv-drug-use", "iv-drug-use"),
        ("immunosuppression", "immunosuppression"),
        ("significant-trauma", "significant-trauma"),
        ("long-term-steroids", "long-term-steroids"),
    ],
)
def test_questionnaire_red_flags_yes_no_and_wrong_type(facts_of, link_id, flag_id) -> None:
    def state(value):
        return flag(
            facts_of(record(lbp(), questionnaire_response({link_id: value}, authored=days_ago(1)))), flag_id
        ).state

    assert state(True) is State.MET
    assert state(False) is State.NOT_MET
    assert state(("valueString", "yes")) is State.NOT_DOCUMENTED


def test_active_only_flags_ignore_resolved_conditions(facts_of) -> None:
    assert not flag(facts_of(record(lbp(), condition("6077001", clinical="resolved"))), "neurological-deficit").met
    assert flag(facts_of(record(lbp(), condition("363346000", clinical="resolved"))), "history-of-cancer").met


# -- fever ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (38.0, "Cel", State.MET),  # boundary: >= 38.0
        (37.9, "Cel", State.NOT_MET),
        (100.4, "[degF]", State.MET),  # 38.0 C
        (100.2, "[degF]", State.NOT_MET),
        (39.0, "K", State.NOT_DOCUMENTED),  # unknown unit
    ],
)
def test_body_temperature(facts_of, value, unit, expected) -> None:
    finding = flag(facts_of(record(lbp(), temperature(value, unit))), "fever")
    assert finding.state is expected
    if expected is State.NOT_DOCUMENTED:
        assert "unit" in finding.note


def test_fever_window_is_14_days_inclusive(facts_of) -> None:
    assert flag(facts_of(record(lbp(), temperature(39.0, days=14))), "fever").met
    assert flag(facts_of(record(lbp(), temperature(39.0, days=15))), "fever").state is State.NOT_DOCUMENTED
    assert not flag(facts_of(record(lbp(), condition("386661006", onset=days_ago(15)))), "fever").met
    old_answer = questionnaire_response({"fever": True}, authored=days_ago(20))
    assert flag(facts_of(record(lbp(), old_answer)), "fever").state is State.NOT_DOCUMENTED


def test_temperature_without_value_is_not_documented(facts_of) -> None:
    obs = observation("8310-5", effective=days_ago(1))
    assert flag(facts_of(record(lbp(), obs)), "fever").state is State.NOT_DOCUMENTED


def test_any_high_temperature_beats_a_normal_one(facts_of) -> None:
    rec = record(lbp(), temperature(36.8, days=1), temperature(38.5, days=5))
    assert flag(facts_of(rec), "fever").met


# -- trauma, incontinence, age --------------------------------------------------------------------
def test_trauma_window_is_90_days_inclusive(facts_of) -> None:
    assert flag(facts_of(record(lbp(), condition("81102000", onset=days_ago(90)))), "significant-trauma").met
    assert not flag(facts_of(record(lbp(), condition("81102000", onset=days_ago(91)))), "significant-trauma").met
    assert not flag(facts_of(record(lbp(), condition("125608002"))), "significant-trauma").met  # undated


def test_incontinence_must_be_new(facts_of) -> None:
    assert flag(facts_of(record(lbp(), condition("R32", ICD, onset=days_ago(90)))), "incontinence").met
    assert not flag(facts_of(record(lbp(), condition("R32", ICD, onset=days_ago(400)))), "incontinence").met
    undated = flag(facts_of(record(lbp(), condition("R32", ICD))), "incontinence")
    assert not undated.met and "undated" in undated.note


@pytest.mark.parametrize(("age", "expected"), [(70, State.MET), (69, State.NOT_MET), (85, State.MET)])
def test_age_70_or_over(facts_of, age, expected) -> None:
    assert flag(facts_of(record(lbp(), pat=patient(age_birth(age)))), "age-70-or-over").state is expected


def test_age_70_boundary_day_before_birthday(facts_of) -> None:
    assert not flag(facts_of(record(lbp(), pat=patient(age_birth(70, -1)))), "age-70-or-over").met


# -- patient-view cards ---------------------------------------------------------------------------
def test_red_flag_card_lists_flags_and_imaging(run) -> None:
    decisions = run(
        "patient-view", record(lbp(20), condition("363346000", clinical="resolved"), pat=patient(age_birth(72)))
    )
    card = next(d for d in decisions if d.topic == "red-flag")
    assert card.params["red_flag_ids"] == ["history-of-cancer", "age-70-or-over"]
    assert card.params["red_flag_categories"] == ["malignancy", "fracture"]
    assert [p["id"] for p in card.params["preferred_imaging"]] == ["malignancy", "fracture"]
    assert card.params["red_flags"][0]["evidence"][0].startswith("Malignant neoplastic disease")
    assert card.params["age_over_50"] is True
    assert card.citations and all(c.version for c in card.citations)
    assert {c.id for c in card.criteria} >= {"red-flag-history-of-cancer", "red-flag-fever"}
    assert "self-management" not in topics(decisions)


def test_cauda_equina_replaces_red_flag(run) -> None:
    decisions = run("patient-view", record(lbp(5), condition("267064002"), condition("6077001")))
    assert topics(decisions).count("cauda-equina") == 1 and "red-flag" not in topics(decisions)
    card = decisions[0]
    assert card.rule == "red-flags.cauda-equina"
    assert [f["id"] for f in card.params["cauda_equina_features"]] == ["urinary-retention"]
    assert card.params["red_flag_ids"] == ["urinary-retention", "neurological-deficit"]
    assert not card.suggestions


def test_red_flags_need_an_active_back_pain_episode(run) -> None:
    assert run("patient-view", record(condition("363346000"))) == []
    assert run("patient-view", record(lbp(clinical="resolved"), condition("363346000"))) == []


def test_age_over_50_alone_is_not_a_red_flag(run) -> None:
    decisions = run("patient-view", record(lbp(10), pat=patient(age_birth(60))))
    assert topics(decisions) == ["self-management"]
    assert decisions[0].params["age_over_50"] is True
    assert run("patient-view", record(lbp(10), pat=patient(age_birth(50))))[0].params["age_over_50"] is False


def test_red_flag_recorded_as_an_observation_is_seen(run) -> None:
    """Some EHRs record history of cancer as an Observation: the prefetch searches for it and the rule
    reads it (positive); a cancer code on a cancelled Observation is ignored (negative)."""
    from cds_service.clinical.knowledge import Knowledge

    from .builders import SNOMED, lbp, observation, record

    assert "363346000" in Knowledge.load(None).search_tokens("symptom-findings")
    finding = observation("363346000", SNOMED, effective="2020-01-01", value_bool=True)
    assert [d.topic for d in run("patient-view", record(lbp(20), finding))] == ["red-flag"]
    finding["status"] = "cancelled"
    assert "red-flag" not in [d.topic for d in run("patient-view", record(lbp(20), finding))]
