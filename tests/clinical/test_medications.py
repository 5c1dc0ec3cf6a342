"""Medication classes, steroid duration, immunosuppressants and conservative care."""

from __future__ import annotations

from datetime import date, timedelta

from cds_service.clinical.dates import add_months
from cds_service.clinical.model import State

from .builders import (
    ATC,
    CPT,
    RXNORM,
    SNOMED,
    TODAY,
    days_ago,
    lbp,
    med_request,
    procedure,
    record,
    service_request,
)


def flag(facts, flag_id: str):
    return next(f for f in facts.red_flags if f.id == flag_id).finding


def months_ago(months: int) -> str:
    return add_months(TODAY, -months).isoformat()


# -- steroids --------------------------------------------------------------------------------------
def test_active_steroid_for_exactly_3_months_is_met(facts_of) -> None:
    start = months_ago(3)
    assert flag(facts_of(record(lbp(), med_request("8640", authored=start))), "long-term-steroids").met


def test_active_steroid_one_day_short_of_3_months_is_not_met(facts_of) -> None:
    start = (date.fromisoformat(months_ago(3)) + timedelta(days=1)).isoformat()
    finding = flag(facts_of(record(lbp(), med_request("8640", authored=start))), "long-term-steroids")
    assert finding.state is State.NOT_MET and "less than 3 months" in finding.note


def test_completed_course_from_validity_period(facts_of) -> None:
    long = med_request("8638", status="completed", authored="2024-01-10", validity=("2024-01-10", "2024-04-10"))
    short = med_request("8638", status="completed", authored="2024-01-10", validity=("2024-01-10", "2024-04-09"))
    assert flag(facts_of(record(lbp(), long)), "long-term-steroids").met
    assert not flag(facts_of(record(lbp(), short)), "long-term-steroids").met


def test_bounds_duration_and_supply_with_repeats(facts_of) -> None:
    bounds = med_request("6902", status="completed", authored="2024-01-10", bounds_duration=(3, "mo"))
    supply = med_request("6902", status="completed", authored="2024-01-01", supply_days=30, repeats=2)  # 90 days
    assert flag(facts_of(record(lbp(), bounds)), "long-term-steroids").met
    assert not flag(facts_of(record(lbp(), supply)), "long-term-steroids").met  # 90 days < 3 calendar months
    supply4 = med_request("6902", status="completed", authored="2024-01-01", supply_days=30, repeats=3)
    assert flag(facts_of(record(lbp(), supply4)), "long-term-steroids").met


def test_consecutive_monthly_prescriptions_are_merged(facts_of) -> None:
    monthly = [
        med_request("8640", status="completed", authored=d, supply_days=31)
        for d in ("2024-01-01", "2024-02-01", "2024-03-01")
    ]
    assert flag(facts_of(record(lbp(), *monthly)), "long-term-steroids").met
    gap = [med_request("8640", status="completed", authored=d, supply_days=30) for d in ("2024-01-01", "2024-03-01")]
    assert not flag(facts_of(record(lbp(), *gap)), "long-term-steroids").met


def test_steroid_by_atc_and_by_name_but_not_topical(facts_of) -> None:
    atc = med_request("H02AB06", ATC, authored=days_ago(200))
    by_name = med_request("999999", RXNORM, text="Prednisolone 5 MG Oral Tablet", authored=days_ago(200))
    cream = med_request("999998", RXNORM, text="Hydrocortisone 1 % Topical Cream", authored=days_ago(200))
    assert flag(facts_of(record(lbp(), atc)), "long-term-steroids").met
    named = flag(facts_of(record(lbp(), by_name)), "long-term-steroids")
    assert named.met and "matched by name" in named.evidence[0].text
    assert flag(facts_of(record(lbp(), cream)), "long-term-steroids").state is State.NOT_DOCUMENTED


def test_steroid_without_dates_is_not_documented(facts_of) -> None:
    finding = flag(facts_of(record(lbp(), med_request("8640", status="completed"))), "long-term-steroids")
    assert finding.state is State.NOT_DOCUMENTED and "cannot be determined" in finding.note


def test_cancelled_and_entered_in_error_requests_are_ignored(facts_of) -> None:
    for status in ("cancelled", "entered-in-error", "draft"):
        req = med_request("8640", status=status, authored=days_ago(400))
        assert flag(facts_of(record(lbp(), req)), "long-term-steroids").state is State.NOT_DOCUMENTED


def test_medication_reference_is_resolved(facts_of) -> None:
    req = med_request("8640", authored=days_ago(200))
    del req["medicationCodeableConcept"]
    req["medicationReference"] = {"reference": "Medication/m1"}
    med = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": RXNORM, "code": "8640"}]}}
    assert flag(facts_of(record(lbp(), req, med)), "long-term-steroids").met


# -- immunosuppressants ----------------------------------------------------------------------------
def test_current_immunosuppressant_is_immunosuppression(facts_of) -> None:
    assert flag(facts_of(record(lbp(), med_request("6851", authored=days_ago(30)))), "immunosuppression").met
    assert flag(facts_of(record(lbp(), med_request("L04AX03", ATC, status="on-hold"))), "immunosuppression").met
    stopped = med_request("6851", status="stopped", authored=days_ago(300))
    assert not flag(facts_of(record(lbp(), stopped)), "immunosuppression").met


# -- conservative care -----------------------------------------------------------------------------
def test_nsaid_exactly_6_weeks_ago_counts(facts_of) -> None:
    assert facts_of(record(lbp(), med_request("5640", authored=days_ago(42)))).conservative_care.met
    recent = facts_of(record(lbp(), med_request("5640", authored=days_ago(41)))).conservative_care
    assert recent.state is State.NOT_MET and "less than 6 weeks" in recent.note


def test_physiotherapy_referral_or_procedure(facts_of) -> None:
    referral = service_request("306170007", SNOMED, status="completed", authored=days_ago(60))
    proc = procedure("97110", CPT, performed=days_ago(50))
    draft = service_request("306170007", SNOMED, status="draft", authored=days_ago(60))
    assert facts_of(record(lbp(), referral)).conservative_care.met
    assert facts_of(record(lbp(), proc)).conservative_care.met
    assert facts_of(record(lbp(), draft)).conservative_care.state is State.NOT_DOCUMENTED


def test_no_conservative_care(facts_of) -> None:
    finding = facts_of(record(lbp())).conservative_care
    assert finding.state is State.NOT_DOCUMENTED and finding.note


def test_biologics_and_opioids_are_recognised_by_code_and_by_name(facts_of) -> None:
    """Spondyloarthritis biologics (e.g. secukinumab) are immunosuppression; opioid analgesics are an
    analgesic course for conservative care; an uncoded statin is neither."""
    biologic = med_request("1599788", authored=days_ago(30))
    by_name = med_request("999999", text="Cosentyx (secukinumab) 150 mg pen", authored=days_ago(30))
    assert flag(facts_of(record(lbp(), biologic)), "immunosuppression").met
    assert flag(facts_of(record(lbp(), by_name)), "immunosuppression").met
    assert facts_of(record(lbp(), med_request("7804", authored=days_ago(60)))).conservative_care.met
    statin = med_request("999998", text="atorvastatin 20 mg", authored=days_ago(60))
    assert not facts_of(record(lbp(), statin)).conservative_care.met
