"""Clinical rules rev 2, section 1: site time zone, partial birth dates as age ranges, the under-16 cut-off."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cds_service.clinical.model import State

from .builders import (
    TODAY,
    age_birth,
    condition,
    lbp,
    mri_order,
    patient,
    questionnaire_response,
    record,
    temperature,
)
from .conftest import topics

LA = ZoneInfo("America/Los_Angeles")
SYDNEY = ZoneInfo("Australia/Sydney")


def flag(facts, flag_id):
    return next(f for f in facts.red_flags if f.id == flag_id).finding


def imaging_case(decisions):
    [decision] = decisions
    return decision.params.get("case")


# -- site time zone --------------------------------------------------------------------------------
def test_west_of_utc_evening_visit_is_evaluated_on_the_local_day(facts_of) -> None:
    evening = datetime(2025, 6, 15, 21, 30, tzinfo=LA)  # 2025-06-16 04:30 UTC
    assert facts_of(record(), now=evening).today == date(2025, 6, 15)
    assert facts_of(record(), now=evening.astimezone(UTC)).today == date(2025, 6, 16)


def test_west_of_utc_evening_keeps_day_counts_local(run) -> None:
    """41 days of back pain locally is under 6 weeks; read on the UTC day it would be 42 (the boundary)."""
    evening = datetime(2025, 6, 15, 21, 30, tzinfo=LA)
    onset = (date(2025, 6, 15) - timedelta(days=41)).isoformat()
    rec = record(condition("279039007", onset=onset), draft_orders=(mri_order(rid="o1"),))
    assert imaging_case(run("order-sign", rec, now=evening)) == "under-6-weeks"
    assert imaging_case(run("order-sign", rec, now=evening.astimezone(UTC))) == "no-conservative-care"


def test_east_of_utc_morning_reading_is_in_the_window(facts_of) -> None:
    """A 38.5 °C reading at 07:00 in Sydney on the window's first day is 21:00 UTC the day before."""
    now = datetime(2025, 6, 15, 9, 0, tzinfo=SYDNEY)  # window: 2025-06-01 .. 2025-06-15
    reading = temperature(38.5)
    reading["effectiveDateTime"] = "2025-06-01T07:00:00+10:00"
    assert flag(facts_of(record(lbp(), reading), now=now), "fever").state is State.MET
    # the same instant read in UTC falls on 2025-05-31, outside the window
    utc_now = datetime(2025, 6, 15, 9, 0, tzinfo=UTC)
    assert flag(facts_of(record(lbp(), reading), now=utc_now), "fever").state is State.NOT_DOCUMENTED


def test_east_of_utc_reading_the_evening_before_the_window_is_outside(facts_of) -> None:
    now = datetime(2025, 6, 15, 9, 0, tzinfo=SYDNEY)
    reading = temperature(38.5)
    reading["effectiveDateTime"] = "2025-05-31T23:00:00+10:00"
    assert flag(facts_of(record(lbp(), reading), now=now), "fever").state is State.NOT_DOCUMENTED


def test_utc_z_instants_are_converted_to_the_site_zone(facts_of) -> None:
    now = datetime(2025, 6, 15, 9, 0, tzinfo=SYDNEY)
    reading = temperature(38.5)
    reading["effectiveDateTime"] = "2025-05-31T22:30:00Z"  # 08:30 on 2025-06-01 in Sydney
    assert flag(facts_of(record(lbp(), reading), now=now), "fever").state is State.MET


def test_date_only_values_are_not_shifted(facts_of) -> None:
    now = datetime(2025, 6, 15, 21, 30, tzinfo=LA)
    facts = facts_of(record(lbp(None, onset="2025-06-01")), now=now)
    assert facts.episode.onset == date(2025, 6, 1) and facts.episode.duration_days == 14


# -- partial birth dates ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("birth", "state", "age_range"),
    [
        (str(TODAY.year - 70), State.NOT_DOCUMENTED, (69, 70)),  # birth year only at 69/70
        (str(TODAY.year - 71), State.MET, (70, 71)),
        (str(TODAY.year - 69), State.NOT_MET, (68, 69)),
        (f"{TODAY.year - 70}-{TODAY.month:02d}", State.NOT_DOCUMENTED, (69, 70)),  # birthday month = this month
        (f"{TODAY.year - 70}-{TODAY.month - 1:02d}", State.MET, (70, 70)),  # last month: surely 70
        (f"{TODAY.year - 70}-{TODAY.month + 1:02d}", State.NOT_MET, (69, 69)),
    ],
)
def test_partial_birth_date_age_flag(facts_of, birth, state, age_range) -> None:
    facts = facts_of(record(lbp(), pat=patient(birth)))
    finding = flag(facts, "age-70-or-over")
    assert (finding.state, facts.age_range) == (state, age_range)
    if state is State.NOT_DOCUMENTED:
        assert "69–70" in (finding.note or "") and finding.evidence  # the card shows the range


def test_partial_birth_date_age_range_reaches_the_card_params(run) -> None:
    decisions = run("patient-view", record(lbp(20), condition("363346000"), pat=patient(str(TODAY.year - 70))))
    card = next(d for d in decisions if d.topic == "red-flag")
    assert card.params["patient_age"] == "69–70"
    assert "age-70-or-over" not in card.params["red_flag_ids"]
    age_row = next(c for c in card.criteria if c.id == "red-flag-age-70-or-over")
    assert age_row.state is State.NOT_DOCUMENTED


def test_partial_birth_date_onset_before_35_straddling_is_not_documented(facts_of, knowledge) -> None:
    from cds_service.clinical.axspa import nice_criteria

    # born in 1990 (year only), back pain since 2025-01-01: age at onset 34 or 35
    facts = facts_of(record(lbp(None, onset="2025-01-01"), pat=patient("1990")))
    onset35 = next(c for c in nice_criteria(facts, knowledge) if c.id == "nice-onset-before-35")
    assert onset35.state is State.NOT_DOCUMENTED and "34–35" in onset35.note
    facts = facts_of(record(lbp(None, onset="2025-01-01"), pat=patient("1995")))
    onset35 = next(c for c in nice_criteria(facts, knowledge) if c.id == "nice-onset-before-35")
    assert onset35.state is State.MET  # 29–30: whole range below 35


def test_partial_birth_date_entry_onset_before_45(facts_of, knowledge) -> None:
    from cds_service.clinical.axspa import entry_criteria

    facts = facts_of(record(lbp(None, onset="2025-01-01"), pat=patient("1980")))  # 44–45 at onset
    entry45 = next(c for c in entry_criteria(facts, knowledge) if c.id == "entry-onset-before-45")
    assert entry45.state is State.NOT_DOCUMENTED


# -- under 16: no card at all ----------------------------------------------------------------------
def _busy_record(birth: str):
    """Red flag, axSpA-style answers and a lumbar MRI order: an adult would get cards on every hook."""
    return record(
        lbp(20),
        condition("363346000"),
        questionnaire_response({"saddle-anaesthesia": True}),
        pat=patient(birth),
        draft_orders=(mri_order(rid="o1"),),
        selections=("ServiceRequest/o1",),
    )


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_under_16_gets_no_card_on_any_hook(run, hook) -> None:
    assert run(hook, _busy_record(age_birth(15))) == []
    assert run(hook, _busy_record(age_birth(16, -1))) == []  # the day before the 16th birthday
    assert run(hook, _busy_record(age_birth(12))) == []


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_exactly_16_gets_cards(run, hook) -> None:
    assert "cauda-equina" in topics(run(hook, _busy_record(age_birth(16))))


def test_birth_year_that_may_be_under_16_gets_no_card(run) -> None:
    assert run("patient-view", _busy_record(str(TODAY.year - 16))) == []  # 15 or 16
    assert topics(run("patient-view", _busy_record(str(TODAY.year - 17)))) == ["cauda-equina"]  # 16 or 17


def test_unknown_birth_date_still_gets_cards(run) -> None:
    rec = _busy_record(age_birth(40))
    rec = record(*rec.resources, pat={"resourceType": "Patient", "id": "p1"})
    assert topics(run("patient-view", rec)) == ["cauda-equina"]


def test_minimum_age_is_configurable(tmp_path) -> None:
    from cds_service.clinical import evaluate
    from cds_service.clinical.knowledge import Knowledge

    from .builders import inp

    site = tmp_path / "site.yaml"
    site.write_text("thresholds:\n  minimum_age_years: 18\n", encoding="utf-8")
    knowledge = Knowledge.load(site)
    assert evaluate(inp("patient-view", _busy_record(age_birth(17))), knowledge) == []
    assert evaluate(inp("patient-view", _busy_record(age_birth(18))), knowledge)


def test_birth_date_in_the_future_is_read_as_not_documented(run, facts_of) -> None:
    facts = facts_of(record(lbp(20), pat=patient("2999-01-01")))
    assert facts.age_range is None and any("after today" in s for s in facts.skipped)
    assert "self-management" in topics(run("patient-view", record(lbp(20), pat=patient("2999-01-01"))))
