"""Chronic nonspecific low back pain (spec section 4, rev 2): the chronic-management card.

12 weeks or more (days >= 84), adult, no red flag, no axSpA card, nonspecific; a physiotherapy referral for
an exercise programme is suggested when no physiotherapy is recorded in the last 12 months.
"""

from __future__ import annotations

import pytest

from cds_service.clinical.chronic_management import REASON_TEXT, evaluate_chronic_management
from cds_service.clinical.facts import build_facts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.orders import OrderContext

from .builders import (
    ICD,
    NOW,
    age_birth,
    condition,
    days_ago,
    lbp,
    patient,
    procedure,
    questionnaire_response,
    record,
    service_request,
)
from .conftest import topics
from .test_axspa import axspa_record


def chronic(decisions):
    found = [d for d in decisions if d.topic == "chronic-management"]
    assert len(found) == 1, topics(decisions)
    return found[0]


def test_chronic_nonspecific_pain_gets_the_card_and_a_physiotherapy_suggestion(run) -> None:
    decisions = run("patient-view", record(lbp(200)))
    assert topics(decisions) == ["chronic-management"]
    card = decisions[0]
    assert card.rule == "chronic-management.nonspecific-lbp"
    assert {c.id for c in card.citations} >= {"nice-ng59", "acp-2017"}
    assert card.params["duration_weeks"] == 28 and card.params["min_weeks"] == 12
    assert card.params["physiotherapy_suggested"] is True
    [suggestion] = card.suggestions
    assert suggestion.kind == "refer-physiotherapy"
    resource = suggestion.actions[0]["resource"]
    assert resource["code"]["coding"][0]["code"] == "306170007"
    reason_codes = resource["reasonCode"]
    assert {"text": REASON_TEXT} in reason_codes
    assert any(c.get("coding", [{}])[0].get("code") == "279039007" for c in reason_codes)
    states = {c.id: c.state.value for c in card.criteria}
    assert states["cm-duration-12-weeks-or-more"] == "met"
    assert states["cm-physiotherapy-recent"] == "not-documented"
    assert states["cm-no-red-flags"] == "not-documented"  # nothing asked: never "met" by default


def test_boundary_exactly_12_weeks_and_11_weeks_6_days(run) -> None:
    assert topics(run("patient-view", record(lbp(84)))) == ["chronic-management"]  # exactly 12 weeks
    assert topics(run("patient-view", record(lbp(83)))) == ["self-management"]  # 11 weeks 6 days


def test_red_flag_present_no_card(run) -> None:
    decisions = run("patient-view", record(lbp(200), condition("Z85.3", ICD)))
    assert "chronic-management" not in topics(decisions)
    assert "red-flag" in topics(decisions)
    answered_yes = questionnaire_response({"unexplained-weight-loss": True})
    assert "chronic-management" not in topics(run("patient-view", record(lbp(200), answered_yes)))


def test_axspa_card_no_card(run, knowledge, facts_of) -> None:
    rec = axspa_record(4)
    assert topics(run("patient-view", rec)) == ["axspa-referral"]
    ctx = OrderContext.from_record(rec, NOW)
    assert evaluate_chronic_management(facts_of(rec), rec, knowledge, ctx, axspa_card_shown=True) == []


def test_adults_only(run) -> None:
    assert run("patient-view", record(lbp(200), pat=patient(age_birth(17, extra_days=360)))) == []
    assert topics(run("patient-view", record(lbp(200), pat=patient(age_birth(18))))) == ["chronic-management"]
    assert run("patient-view", record(lbp(200), pat=patient(None))) == []  # age unknown: not shown


def test_not_for_radicular_pain_axspa_diagnosis_or_no_episode(run) -> None:
    assert run("patient-view", record(lbp(200), condition("23056005"))) == []  # sciatica
    assert run("patient-view", record(lbp(200), condition("9631008"))) == []  # ankylosing spondylitis
    assert run("patient-view", record(lbp(None))) == []
    assert run("patient-view", record()) == []


def test_recent_physiotherapy_means_no_suggestion(run) -> None:
    referral = service_request("306170007", status="completed", authored=days_ago(300))
    card = chronic(run("patient-view", record(lbp(400), referral)))
    assert card.suggestions == () and card.params["physiotherapy_suggested"] is False
    assert {c.id: c.state.value for c in card.criteria}["cm-physiotherapy-recent"] == "met"
    assert card.params["recent_physiotherapy"]
    session = procedure("91251008", performed=days_ago(20))
    assert chronic(run("patient-view", record(lbp(400), session))).suggestions == ()


def test_old_or_cancelled_physiotherapy_still_suggests(run) -> None:
    old = service_request("306170007", status="completed", authored=days_ago(400))
    revoked = service_request("306170007", status="revoked", authored=days_ago(30))
    error = procedure("91251008", performed=days_ago(30), status="entered-in-error")
    card = chronic(run("patient-view", record(lbp(500), old, revoked, error)))
    assert [s.kind for s in card.suggestions] == ["refer-physiotherapy"]


@pytest.mark.parametrize(("months", "suggested"), [(12, True), (24, False)])
def test_lookback_is_a_site_threshold(tmp_path, facts_of, months: int, suggested: bool) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(f"thresholds:\n  exercise_programme_lookback_months: {months}\n", encoding="utf-8")
    knowledge = Knowledge.load(site)
    rec = record(lbp(600), service_request("306170007", status="completed", authored=days_ago(500)))
    ctx = OrderContext.from_record(rec, NOW)
    [card] = evaluate_chronic_management(build_facts(rec, knowledge, NOW), rec, knowledge, ctx, False)
    assert bool(card.suggestions) is suggested
