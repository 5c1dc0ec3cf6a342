"""Clinical rules rev 2, section 1: every body-temperature code in °C or °F, the complete 14-day fever
window (PatientRecord.temperatures_complete_since), and MedicationStatement read like MedicationRequest."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds_service.clinical.model import State

from .builders import NOW, RXNORM, TODAY, days_ago, lbp, mri_order, observation, record, temperature


def fever(facts):
    return next(f for f in facts.red_flags if f.id == "fever").finding


# -- every temperature code, both units ------------------------------------------------------------
@pytest.mark.parametrize("code", ["8310-5", "8329-5", "8331-1", "8332-9", "8333-7", "8328-7", "75539-7", "76011-6"])
def test_every_body_temperature_code_counts(facts_of, code) -> None:
    reading = observation(code, effective=days_ago(3), quantity=(38.6, "Cel"))
    assert fever(facts_of(record(lbp(), reading))).met


def test_an_unrelated_temperature_code_does_not_count(facts_of) -> None:
    skin = observation("61008-9", effective=days_ago(3), quantity=(39.0, "Cel"))  # body surface temperature
    assert fever(facts_of(record(lbp(), skin))).state is State.NOT_DOCUMENTED


@pytest.mark.parametrize(
    ("value", "unit", "met"),
    [
        (100.4, "[degF]", True),  # 38.0 °C: the threshold is inclusive
        (100.3, "[degF]", False),
        (101.2, "°F", True),
        (38.0, "°C", True),
        (37.9, "Cel", False),
        (38.0, "degC", True),
    ],
)
def test_temperature_units_and_threshold(facts_of, value, unit, met) -> None:
    assert fever(facts_of(record(lbp(), temperature(value, unit)))).met is met


def test_unitless_temperature_is_read_from_its_plausible_range(facts_of) -> None:
    celsius = temperature(38.5)
    del celsius["valueQuantity"]["unit"], celsius["valueQuantity"]["code"]
    fahrenheit = temperature(101.5)
    del fahrenheit["valueQuantity"]["unit"], fahrenheit["valueQuantity"]["code"]
    nonsense = temperature(60.0)
    del nonsense["valueQuantity"]["unit"], nonsense["valueQuantity"]["code"]
    assert fever(facts_of(record(lbp(), celsius))).met
    assert fever(facts_of(record(lbp(), fahrenheit))).met
    assert not fever(facts_of(record(lbp(), nonsense))).met


def _hourly(n: int, fever_at: int | None, start: datetime) -> list[dict[str, Any]]:
    """n hourly readings going back from *start*; reading number *fever_at* (0 = newest) is 38.9 °C."""
    out = []
    for hour in range(n):
        reading = observation("8310-5", quantity=(38.9 if hour == fever_at else 36.8, "Cel"))
        reading["effectiveDateTime"] = (start - timedelta(hours=hour)).isoformat()
        out.append(reading)
    return out


def test_fever_hidden_behind_sixty_normal_readings_is_found(facts_of) -> None:
    readings = _hourly(61, 60, NOW - timedelta(days=1))
    assert fever(facts_of(record(lbp(), *readings))).met


def test_hundreds_of_normal_readings_are_not_met(facts_of) -> None:
    readings = _hourly(14 * 24, None, NOW)
    finding = fever(facts_of(record(lbp(), *readings)))
    assert finding.state is State.NOT_MET and len(finding.evidence) > 300


# -- complete window -------------------------------------------------------------------------------
def test_incomplete_window_without_fever_is_not_documented_and_names_the_days(facts_of) -> None:
    since = NOW - timedelta(days=3)
    rec = replace(record(lbp(), *_hourly(50, None, NOW)), temperatures_complete_since=since)
    finding = fever(facts_of(rec))
    assert finding.state is State.NOT_DOCUMENTED
    window_start = (TODAY - timedelta(days=14)).isoformat()
    assert window_start in finding.note and since.date().isoformat() in finding.note


def test_incomplete_window_with_a_fever_reading_is_met(facts_of) -> None:
    rec = replace(record(lbp(), *_hourly(50, 10, NOW)), temperatures_complete_since=NOW - timedelta(days=2))
    assert fever(facts_of(rec)).met


def test_complete_since_before_the_window_start_changes_nothing(facts_of) -> None:
    rec = replace(record(lbp(), temperature(36.9)), temperatures_complete_since=NOW - timedelta(days=20))
    assert fever(facts_of(rec)).state is State.NOT_MET


def test_complete_since_exactly_the_window_start_is_complete(facts_of) -> None:
    start = datetime.combine(TODAY - timedelta(days=14), datetime.min.time(), tzinfo=UTC)
    rec = replace(record(lbp(), temperature(36.9)), temperatures_complete_since=start)
    assert fever(facts_of(rec)).state is State.NOT_MET
    rec = replace(rec, temperatures_complete_since=start + timedelta(days=1))
    assert fever(facts_of(rec)).state is State.NOT_DOCUMENTED


def test_incomplete_window_overrides_a_questionnaire_no(facts_of) -> None:
    from .builders import questionnaire_response

    answer = questionnaire_response({"fever": False}, authored=days_ago(1))
    rec = replace(record(lbp(), answer, temperature(36.9)), temperatures_complete_since=NOW - timedelta(days=5))
    assert fever(facts_of(rec)).state is State.NOT_DOCUMENTED


def test_incomplete_window_keeps_the_imaging_card_honest(run) -> None:
    """The order card does not say 'no red flags' when fever could not be checked."""
    rec = replace(
        record(lbp(3), temperature(36.9), draft_orders=(mri_order(rid="o1"),)),
        temperatures_complete_since=NOW - timedelta(days=4),
    )
    [card] = run("order-sign", rec)
    row = next(c for c in card.criteria if c.id == "imaging-red-flags")
    assert row.state is State.NOT_DOCUMENTED


# -- MedicationStatement ---------------------------------------------------------------------------
def statement(
    code: str,
    status: str = "completed",
    *,
    start: str | None = None,
    end: str | None = None,
    asserted: str | None = None,
    text: str | None = None,
    when: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": f"ms-{code}-{status}-{start}-{asserted}-{when}",
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
        "subject": {"reference": "Patient/p1"},
    }
    if text:
        res["medicationCodeableConcept"] = {"text": text}
    if start or end:
        res["effectivePeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if when:
        res["effectiveDateTime"] = when
    if asserted:
        res["dateAsserted"] = asserted
    return res


@pytest.mark.parametrize("status", ["completed", "active", "intended"])
def test_nsaid_statement_counts_as_conservative_care(facts_of, status) -> None:
    care = facts_of(record(lbp(), statement("5640", status, start=days_ago(50)))).conservative_care
    assert care.met and care.evidence[0].reference.startswith("MedicationStatement/")


@pytest.mark.parametrize("status", ["not-taken", "entered-in-error", "stopped", "on-hold", "unknown"])
def test_statement_statuses_that_do_not_count(facts_of, status) -> None:
    care = facts_of(record(lbp(), statement("5640", status, start=days_ago(50)))).conservative_care
    assert care.state is State.NOT_DOCUMENTED


def test_statement_dates_effective_datetime_and_date_asserted(facts_of) -> None:
    assert facts_of(record(lbp(), statement("5640", when=days_ago(42)))).conservative_care.met
    assert facts_of(record(lbp(), statement("5640", asserted=days_ago(60)))).conservative_care.met
    recent = facts_of(record(lbp(), statement("5640", when=days_ago(41)))).conservative_care
    assert recent.state is State.NOT_MET  # boundary: 41 days < 6 weeks


def test_over_the_counter_nsaid_by_name(facts_of) -> None:
    otc = statement("x", start=days_ago(60), text="Ibuprofen 200 mg tablet (OTC)")
    assert facts_of(record(lbp(), otc)).conservative_care.met


def test_long_term_steroids_from_statements(facts_of) -> None:
    def steroid(facts):
        return next(f for f in facts.red_flags if f.id == "long-term-steroids").finding

    long = statement("8640", "active", start=(TODAY - timedelta(days=100)).isoformat())
    short = statement("8640", "completed", start=days_ago(60), end=days_ago(10))
    assert steroid(facts_of(record(lbp(), long))).met
    assert steroid(facts_of(record(lbp(), short))).state is State.NOT_MET


def test_statement_with_a_medication_reference(facts_of) -> None:
    med = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": RXNORM, "code": "5640"}]}}
    ms = statement("x", start=days_ago(60))
    del ms["medicationCodeableConcept"]
    ms["medicationReference"] = {"reference": "Medication/m1"}
    assert facts_of(record(lbp(), ms, med)).conservative_care.met


@pytest.mark.parametrize("unit", ["degrees C", "deg C", "°c", "Celsius", "C"])
def test_free_text_celsius_units(facts_of, unit) -> None:
    reading = temperature(38.4)
    reading["valueQuantity"] = {"value": 38.4, "unit": unit}
    assert fever(facts_of(record(lbp(), reading))).met


def test_snomed_unit_code_with_a_readable_unit(facts_of) -> None:
    reading = temperature(101.0)
    reading["valueQuantity"] = {
        "value": 101.0,
        "unit": "degrees F",
        "system": "http://snomed.info/sct",
        "code": "258712004",
    }
    assert fever(facts_of(record(lbp(), reading))).met
    odd = temperature(39.0)
    odd["valueQuantity"] = {"value": 39.0, "unit": "degrees C", "code": "local-unit-7"}
    assert fever(facts_of(record(lbp(), odd))).met


@pytest.mark.parametrize("code", ["276885007", "307047009", "415974002", "431598003"])
def test_snomed_temperature_observables(facts_of, code) -> None:
    from .builders import SNOMED

    reading = observation(code, SNOMED, effective=days_ago(2), quantity=(38.3, "Cel"))
    assert fever(facts_of(record(lbp(), reading))).met


def test_complete_since_as_a_naive_datetime_or_a_date(facts_of) -> None:
    naive = replace(record(lbp(), temperature(36.9)), temperatures_complete_since=datetime(2025, 6, 12, 8, 0))
    assert fever(facts_of(naive)).state is State.NOT_DOCUMENTED
    as_date = replace(record(lbp(), temperature(36.9)), temperatures_complete_since=TODAY - timedelta(days=2))
    assert fever(facts_of(as_date)).state is State.NOT_DOCUMENTED
