"""Self-management advice for nonspecific low back pain under 12 weeks."""

from __future__ import annotations

from cds_service.clinical.self_management import evaluate_self_management

from .builders import ICD, condition, days_ago, lbp, questionnaire_response, record
from .conftest import topics
from .test_axspa import axspa_record


def test_nonspecific_lbp_under_12_weeks(run) -> None:
    decisions = run("patient-view", record(lbp(30)))
    assert topics(decisions) == ["self-management"]
    card = decisions[0]
    assert card.params["duration_weeks"] == 4 and card.params["max_weeks"] == 12
    assert {c.id for c in card.citations} >= {"nice-ng59", "nice-qs155", "acp-2017"}
    assert all(c.state.value == "met" for c in card.criteria)


def test_boundary_12_weeks(run) -> None:
    assert topics(run("patient-view", record(lbp(83)))) == ["self-management"]
    assert run("patient-view", record(lbp(84))) == []


def test_not_with_red_flags_radicular_pain_or_axspa(run) -> None:
    assert "self-management" not in topics(run("patient-view", record(lbp(10), condition("Z85.3", ICD))))
    assert run("patient-view", record(lbp(10), condition("23056005"))) == []
    assert run("patient-view", record(lbp(10), questionnaire_response({"leg-pain-below-knee": True}))) == []
    assert run("patient-view", record(lbp(10), condition("9631008"))) == []


def test_not_when_an_axspa_card_is_shown(run, knowledge, facts_of) -> None:
    rec = axspa_record(4, onset=days_ago(60))  # axSpA entry fails (< 3 months): no axSpA card -> advice
    assert topics(run("patient-view", rec)) == ["self-management"]
    assert evaluate_self_management(facts_of(rec), knowledge, axspa_card_shown=True) == []


def test_not_without_known_duration_or_episode(run) -> None:
    assert run("patient-view", record(lbp(None))) == []
    assert run("patient-view", record()) == []
