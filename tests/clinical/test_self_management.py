"""Self-management advice for nonspecific low back pain under 12 weeks."""

from __future__ import annotations

from cds_service.clinical.questionnaire import RED_FLAG_ITEMS
from cds_service.clinical.self_management import evaluate_self_management

from .builders import ICD, SNOMED, condition, days_ago, lbp, observation, patient, questionnaire_response, record
from .conftest import topics
from .test_axspa import axspa_record


def test_nonspecific_lbp_under_12_weeks(run) -> None:
    decisions = run("patient-view", record(lbp(30)))
    assert topics(decisions) == ["self-management"]
    card = decisions[0]
    assert card.params["duration_weeks"] == 4 and card.params["max_weeks"] == 12
    assert {c.id for c in card.citations} >= {"nice-ng59", "nice-qs155", "acp-2017"}
    states = {c.id: c.state.value for c in card.criteria}
    # rev 2: no red flag was asked, so "no red flags" is not documented (never "met" by default)
    assert states.pop("sm-no-red-flags") == "not-documented"
    assert set(states.values()) == {"met"}
    assert card.params["no_red_flags_confirmed"] is False
    assert "saddle-anaesthesia" in card.params["red_flag_questions_not_asked"]


def test_boundary_12_weeks(run) -> None:
    assert topics(run("patient-view", record(lbp(83)))) == ["self-management"]
    # 84 days = 12 weeks: chronic pain, the chronic-management card instead (spec section 4, rev 2)
    assert topics(run("patient-view", record(lbp(84)))) == ["chronic-management"]


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


# -- rev 2: "no red flags" only when each was explicitly answered no --------------------------------


def osteoporosis_absent() -> dict:
    return observation("64859006", SNOMED, effective=days_ago(5), value_bool=False)


def test_red_flags_all_answered_no_are_met(run) -> None:
    qr = questionnaire_response(dict.fromkeys(RED_FLAG_ITEMS, False), authored=days_ago(1))
    card = run("patient-view", record(lbp(30), qr, osteoporosis_absent()))[0]
    flags = next(c for c in card.criteria if c.id == "sm-no-red-flags")
    assert flags.state.value == "met" and flags.evidence
    assert card.params["no_red_flags_confirmed"] is True
    assert card.params["red_flag_questions_not_asked"] == []


def test_one_question_never_asked_is_not_documented(run) -> None:
    answers = {k: False for k in RED_FLAG_ITEMS if k != "fever"}
    card = run("patient-view", record(lbp(30), questionnaire_response(answers), osteoporosis_absent()))[0]
    flags = next(c for c in card.criteria if c.id == "sm-no-red-flags")
    assert flags.state.value == "not-documented"
    assert card.params["red_flag_questions_not_asked"] == ["fever"]
    assert card.params["no_red_flags_confirmed"] is False


def test_one_bladder_or_bowel_answer_settles_retention_incontinence_and_ces(run) -> None:
    card = run("patient-view", record(lbp(30), questionnaire_response({"bladder-or-bowel-dysfunction": False})))[0]
    not_asked = card.params["red_flag_questions_not_asked"]
    assert "bladder-or-bowel-dysfunction" not in not_asked
    assert card.params["red_flag_questions_answered_no"] == ["bladder-or-bowel-dysfunction", "age"]
    assert "saddle-anaesthesia" in not_asked and "osteoporosis" in not_asked


def test_no_birth_date_means_age_is_asked(run) -> None:
    card = run("patient-view", record(lbp(30), pat=patient(None)))
    assert topics(card) == ["self-management"]
    assert "age" in card[0].params["red_flag_questions_not_asked"]
