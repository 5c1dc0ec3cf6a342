"""PatientFacts: age, episode and onset, conditions status, questionnaire, robustness and speed."""

from __future__ import annotations

import time
from datetime import date

from cds_service.clinical.model import State

from .builders import (
    ICD,
    LOINC,
    NOW,
    QUESTIONNAIRE,
    SNOMED,
    TODAY,
    age_birth,
    condition,
    days_ago,
    lbp,
    observation,
    patient,
    questionnaire_response,
    record,
)


# -- age and sex --------------------------------------------------------------------------------
def test_age_in_completed_years(facts_of) -> None:
    assert facts_of(record(pat=patient(age_birth(40)))).age == 40
    assert facts_of(record(pat=patient(age_birth(40, -1)))).age == 39  # birthday tomorrow
    assert facts_of(record(pat=patient(gender="female"))).sex == "female"


def test_missing_birthdate_is_not_documented(facts_of) -> None:
    facts = facts_of(record(lbp(), pat=patient(birth=None)))
    assert facts.age is None
    flag = next(f for f in facts.red_flags if f.id == "age-70-or-over")
    assert flag.finding.state is State.NOT_DOCUMENTED
    assert facts.episode.onset_age is None


def test_no_patient_resource_at_all(facts_of) -> None:
    facts = facts_of(record(lbp(), no_patient=True))
    assert facts.age is None and facts.episode.present


def test_invalid_patient_is_skipped_and_reported(facts_of) -> None:
    facts = facts_of(record(lbp(), pat={"resourceType": "Patient", "id": "p1", "birthDate": "15/06/1980"}))
    assert facts.age is None
    assert any(s.startswith("Patient/p1") for s in facts.skipped)


def test_partial_birthdate_gives_an_age_range(facts_of) -> None:
    # spec section 1 (rev 2): a birth year alone is an age range, never one age stated as fact
    facts = facts_of(record(pat=patient(str(TODAY.year - 70))))
    assert facts.age is None and facts.age_range == (69, 70) and facts.age_text == "69–70"


# -- episode --------------------------------------------------------------------------------------
def test_episode_onset_from_onset_datetime(facts_of) -> None:
    episode = facts_of(record(lbp(42))).episode
    assert episode.present and episode.onset_source == "onsetDateTime"
    assert (episode.duration_days, episode.duration_weeks) == (42, 6)


def test_episode_onset_is_the_earliest_of_all_sources(facts_of) -> None:
    rec = record(
        lbp(30),
        condition("23056005", onset_period=days_ago(50)),  # sciatica
        questionnaire_response({"pain-onset-date": days_ago(70)}, authored=days_ago(1)),
    )
    episode = facts_of(rec).episode
    assert episode.onset_source == "questionnaire" and episode.duration_days == 70


def test_episode_onset_from_onset_period_and_onset_age(facts_of) -> None:
    assert facts_of(record(lbp(None, onset_period=days_ago(10)))).episode.onset_source == "onsetPeriod.start"
    facts = facts_of(record(lbp(None, onset_age=30), pat=patient("1980-01-01")))
    assert facts.episode.onset_source == "onsetAge"
    assert facts.episode.onset_age == 30 and facts.episode.onset == date(2010, 1, 1)


def test_onset_age_without_birthdate_is_noted(facts_of) -> None:
    facts = facts_of(record(lbp(None, onset_age=30, recorded=days_ago(5)), pat=patient(None)))
    assert facts.episode.onset_source == "recordedDate"
    assert "birthDate is missing" in facts.episode.onset_note


def test_recorded_date_fallback_is_said(facts_of) -> None:
    episode = facts_of(record(lbp(None, recorded=days_ago(20)))).episode
    assert episode.onset_source == "recordedDate" and episode.onset_from_recorded_date
    assert episode.duration_days == 20 and "recorded" in episode.onset_note


def test_condition_without_any_date(facts_of) -> None:
    episode = facts_of(record(lbp(None))).episode
    assert episode.present and episode.onset is None and episode.duration_days is None


def test_partial_onset_uses_earliest_plausible_day(facts_of) -> None:
    episode = facts_of(record(lbp(None, onset="2025-04"))).episode
    assert episode.onset == date(2025, 4, 1)


def test_future_onset_is_clamped(facts_of) -> None:
    episode = facts_of(record(lbp(-5))).episode
    assert episode.duration_days == 0 and "future" in episode.onset_note


def test_icd_codes_with_and_without_dot_make_an_episode(facts_of) -> None:
    assert facts_of(record(condition("M54.50", ICD, onset=days_ago(3)))).episode.present
    assert facts_of(record(condition("M5450", ICD, onset=days_ago(3)))).episode.present


def test_resolved_refuted_and_entered_in_error_conditions_are_not_an_episode(facts_of) -> None:
    assert not facts_of(record(lbp(clinical="resolved"))).episode.present
    assert not facts_of(record(lbp(clinical="inactive"))).episode.present
    assert not facts_of(record(lbp(verification="entered-in-error"))).episode.present
    assert not facts_of(record(lbp(verification="refuted"))).episode.present
    assert facts_of(record(lbp(clinical="recurrence"))).episode.present
    assert facts_of(record(lbp(clinical="relapse"))).episode.present
    assert facts_of(record(lbp(clinical=None))).episode.present


def test_age_at_onset(facts_of) -> None:
    facts = facts_of(record(lbp(None, onset="2015-06-15"), pat=patient("1980-06-15")))
    assert facts.episode.onset_age == 35


# -- radicular ------------------------------------------------------------------------------------
def test_radicular_features(facts_of) -> None:
    assert facts_of(record(lbp(), condition("128196005"))).radicular.met
    assert facts_of(record(lbp(), condition("M48.062", ICD))).radicular.met
    assert facts_of(record(lbp(), questionnaire_response({"leg-pain-below-knee": True}))).radicular.met
    assert not facts_of(record(lbp())).radicular.met
    assert not facts_of(record(lbp(), condition("23056005", clinical="resolved"))).radicular.met


# -- questionnaire --------------------------------------------------------------------------------
def test_latest_questionnaire_answer_wins_per_link_id(facts_of) -> None:
    rec = record(
        lbp(),
        questionnaire_response({"buttock-pain": True, "night-waking-second-half": True}, authored=days_ago(30)),
        questionnaire_response({"buttock-pain": False}, authored=days_ago(2)),
    )
    facts = facts_of(rec)
    assert facts.symptom("buttock-pain").state is State.NOT_MET
    assert facts.symptom("night-waking").state is State.MET  # only answered in the older response


def test_questionnaire_status_and_canonical(facts_of) -> None:
    def state(**kw) -> State:
        return (
            facts_of(record(questionnaire_response({"night-waking-second-half": True}, **kw)))
            .symptom("night-waking")
            .state
        )

    assert state(status="amended") is State.MET
    assert state(questionnaire=QUESTIONNAIRE + "|1.0.0") is State.MET
    assert state(status="in-progress") is State.NOT_DOCUMENTED
    assert state(status="entered-in-error") is State.NOT_DOCUMENTED
    assert state(questionnaire="http://example.org/other") is State.NOT_DOCUMENTED


def test_wrong_answer_type_is_not_documented(facts_of) -> None:
    facts = facts_of(
        record(
            questionnaire_response(
                {
                    "night-waking-second-half": ("valueString", "yes"),
                    "improves-with-movement": ("valueInteger", 1),
                    "pain-onset-date": ("valueString", "last spring"),
                }
            )
        )
    )
    finding = facts.symptom("night-waking")
    assert finding.state is State.NOT_DOCUMENTED and "valueString" in finding.note
    assert facts.symptom("improves-with-movement").state is State.NOT_DOCUMENTED


def test_questionnaire_onset_with_wrong_type_is_noted(facts_of) -> None:
    facts = facts_of(
        record(lbp(None, recorded=days_ago(3)), questionnaire_response({"pain-onset-date": ("valueString", "spring")}))
    )
    assert facts.episode.onset_source == "recordedDate"
    assert "valueString" in facts.episode.onset_note


def test_nested_questionnaire_items_are_read(facts_of) -> None:
    qr = questionnaire_response({})
    qr["item"] = [
        {"linkId": "inflammatory-features", "item": [{"linkId": "buttock-pain", "answer": [{"valueBoolean": True}]}]}
    ]
    assert facts_of(record(qr)).symptom("buttock-pain").met


def test_alternating_buttock_pain_counts_as_buttock_pain_only_when_yes(facts_of) -> None:
    assert facts_of(record(questionnaire_response({"alternating-buttock-pain": True}))).symptom("buttock-pain").met
    no = facts_of(record(questionnaire_response({"alternating-buttock-pain": False}))).symptom("buttock-pain")
    assert no.state is State.NOT_DOCUMENTED


# -- coded findings -------------------------------------------------------------------------------
def test_observation_findings_and_their_negation(facts_of) -> None:
    present = observation("279043006", SNOMED, effective=days_ago(2))
    absent = observation("279043006", SNOMED, effective=days_ago(2), value_cc=(SNOMED, "2667000"))
    assert facts_of(record(present)).symptom("buttock-pain").met
    assert facts_of(record(absent)).symptom("buttock-pain").state is State.NOT_MET
    cancelled = observation("279043006", SNOMED, effective=days_ago(2), status="cancelled")
    error = observation("279043006", SNOMED, effective=days_ago(2), status="entered-in-error")
    assert facts_of(record(cancelled, error)).symptom("buttock-pain").state is State.NOT_DOCUMENTED


def test_past_conditions_count_for_current_or_past_criteria(facts_of) -> None:
    facts = facts_of(record(condition("9014002", clinical="resolved"), condition("3723001", clinical="inactive")))
    assert facts.symptom("psoriasis").met and facts.symptom("arthritis").met
    assert not facts_of(record(condition("9014002", verification="refuted"))).symptom("psoriasis").met


# -- robustness and speed -------------------------------------------------------------------------
def test_invalid_relevant_resource_is_skipped_and_reported(facts_of) -> None:
    broken = lbp()
    broken["onsetDateTime"] = "not a date"
    bad_obs = observation("1988-5", effective=days_ago(2), quantity=(12, "mg/L"))
    del bad_obs["status"]
    facts = facts_of(record(broken, bad_obs, "junk", {"no": "type"}))
    assert not facts.episode.present
    assert len(facts.skipped) == 2 and facts.skipped[0].startswith(broken["resourceType"])


def test_fifty_thousand_irrelevant_observations_stay_fast(facts_of) -> None:
    noise = [
        observation("8867-4", LOINC, effective=days_ago(i % 300), quantity=(70, "/min"), rid=f"hr{i}")
        for i in range(50_000)
    ]
    rec = record(lbp(), *noise)
    start = time.perf_counter()
    facts = facts_of(rec)
    elapsed = time.perf_counter() - start
    assert facts.episode.present
    assert elapsed < 3.0, f"{elapsed:.2f}s"


def test_now_as_a_date_is_accepted(facts_of) -> None:
    assert facts_of(record(lbp(10)), now=NOW.date()).episode.duration_days == 10
