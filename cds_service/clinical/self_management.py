"""Self-management advice (spec section 4): nonspecific low back pain under 12 weeks, no red flags,
no axSpA card. The advice text lives in cards/self-management.yaml (NICE NG59 2016/2020, QS155; ACP 2017).

Red flags (rev 2): "no red flags" is stated only when every red flag was explicitly answered no. The red
flags are grouped by the question a clinician asks (the assessment Questionnaire's linkIds, spec section 5;
e.g. one "new bladder or bowel dysfunction?" answers urinary retention, incontinence and cauda equina
syndrome alike). A question counts as answered when any red flag of its group is "not met"; the others are
listed for the card as "not documented — ask about ...". The card's words for each question id live in the
card file, not here.
"""

from __future__ import annotations

from typing import Any

from cds_service.clinical.citations import ACP_2017, NICE_NG59, NICE_QS155
from cds_service.clinical.decision_params import base_params, criterion, evidence_line
from cds_service.clinical.facts import Finding, PatientFacts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Criterion, Decision, Evidence, State

CITATIONS = (NICE_NG59, NICE_QS155, ACP_2017)

#: Question id -> the red flags (facts.RedFlag.id) one answer to that question settles. A red flag id not
#: listed here is its own question (so a new red flag is never silently treated as answered).
RED_FLAG_QUESTIONS: dict[str, tuple[str, ...]] = {
    "saddle-anaesthesia": ("saddle-anaesthesia",),
    "bladder-or-bowel-dysfunction": (
        "bladder-or-bowel-dysfunction",
        "urinary-retention",
        "incontinence",
        "cauda-equina-syndrome",
    ),
    "progressive-leg-weakness": ("progressive-leg-weakness", "neurological-deficit"),
    "history-of-cancer": ("history-of-cancer",),
    "unexplained-weight-loss": ("unexplained-weight-loss",),
    "fever": ("fever",),
    "iv-drug-use": ("iv-drug-use",),
    "immunosuppression": ("immunosuppression",),
    "significant-trauma": ("significant-trauma",),
    "long-term-steroids": ("long-term-steroids",),
    "osteoporosis": ("osteoporosis",),
    "age": ("age-70-or-over",),
}


def red_flag_questions(facts: PatientFacts) -> tuple[list[str], list[str], tuple[Evidence, ...]]:
    """(question ids never answered, question ids answered no, the evidence of the "no" answers).

    Only meaningful when no red flag is met (the cards that use it are not shown otherwise).
    """
    by_flag = {flag.id: flag for flag in facts.red_flags}
    groups: dict[str, list[str]] = {q: [f for f in ids if f in by_flag] for q, ids in RED_FLAG_QUESTIONS.items()}
    grouped = {f for ids in RED_FLAG_QUESTIONS.values() for f in ids}
    groups.update({flag_id: [flag_id] for flag_id in by_flag if flag_id not in grouped})
    not_asked: list[str] = []
    answered_no: list[str] = []
    evidence: list[Evidence] = []
    for question, flag_ids in groups.items():
        if not flag_ids:
            continue
        denied = [by_flag[f] for f in flag_ids if by_flag[f].finding.state is State.NOT_MET]
        if denied:
            answered_no.append(question)
            evidence.extend(e for flag in denied for e in flag.finding.evidence)
        else:
            not_asked.append(question)
    return not_asked, answered_no, tuple(dict.fromkeys(evidence))


def red_flag_criterion(cid: str, facts: PatientFacts) -> tuple[Criterion, dict[str, Any]]:
    """The "no red flags" criterion (met only when every question was answered no) and its params."""
    not_asked, answered_no, evidence = red_flag_questions(facts)
    state = State.NOT_DOCUMENTED if not_asked else State.MET
    total = len(not_asked) + len(answered_no)
    note = f"{len(not_asked)} of {total} red-flag questions not answered" if not_asked else None
    params = {
        "red_flag_questions_not_asked": not_asked,
        "red_flag_questions_answered_no": answered_no,
        "no_red_flags_confirmed": not not_asked,
    }
    return Criterion(cid, state, evidence, note), params


def duration_evidence(facts: PatientFacts) -> tuple[Evidence, ...]:
    """The episode's duration as evidence ("41 days since onset", dated at the onset)."""
    episode = facts.episode
    onset = episode.onset_evidence
    if onset is None or episode.duration_days is None:
        return ()
    date = episode.onset.isoformat() if episode.onset else onset.date
    return (Evidence(onset.reference, f"{episode.duration_days} days since onset", date),)


def nonspecific_episode(facts: PatientFacts) -> bool:
    """An active back pain episode of known duration, no red flag met, no radicular features, no axSpA."""
    episode = facts.episode
    if not episode.present or episode.duration_days is None:
        return False
    return not (facts.met_red_flags() or facts.radicular.met or facts.axspa_diagnosis)


def evaluate_self_management(facts: PatientFacts, knowledge: Knowledge, axspa_card_shown: bool) -> list[Decision]:
    episode = facts.episode
    max_weeks = knowledge.thresholds.self_management_max_weeks
    if axspa_card_shown or not nonspecific_episode(facts):
        return []
    if episode.duration_days is None or episode.duration_days >= 7 * max_weeks:
        return []
    red_flags, red_flag_params = red_flag_criterion("sm-no-red-flags", facts)
    criteria = (
        criterion("sm-back-pain", Finding(State.MET, episode.conditions)),
        criterion(
            "sm-duration-under-12-weeks",
            Finding(State.MET, duration_evidence(facts), episode.onset_note),
            weeks=max_weeks,
        ),
        red_flags,
        criterion("sm-nonspecific", Finding(State.MET)),
    )
    params = {
        **base_params(facts, knowledge),
        **red_flag_params,
        "max_weeks": max_weeks,
        "reassess_weeks": "4–6",
        "back_pain_evidence": [evidence_line(e) for e in episode.conditions],
    }
    return [
        Decision(
            topic="self-management",
            rule="self-management.nonspecific-lbp",
            citations=CITATIONS,
            criteria=criteria,
            params=params,
        )
    ]
