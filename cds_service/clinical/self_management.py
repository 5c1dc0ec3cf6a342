"""Self-management advice (spec section 4): nonspecific low back pain under 12 weeks, no red flags,
no axSpA card. The advice text lives in cards/self-management.yaml (NICE NG59 / QS155; ACP 2017)."""

from __future__ import annotations

from cds_service.clinical.citations import ACP_2017, NICE_NG59, NICE_QS155
from cds_service.clinical.decision_params import base_params, criterion, evidence_line
from cds_service.clinical.facts import Finding, PatientFacts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Decision, State

CITATIONS = (NICE_NG59, NICE_QS155, ACP_2017)


def evaluate_self_management(facts: PatientFacts, knowledge: Knowledge, axspa_card_shown: bool) -> list[Decision]:
    episode = facts.episode
    max_weeks = knowledge.thresholds.self_management_max_weeks
    if not episode.present or episode.duration_days is None or axspa_card_shown:
        return []
    if episode.duration_days >= 7 * max_weeks or facts.met_red_flags():
        return []
    if facts.radicular.met or facts.axspa_diagnosis:
        return []
    onset_ev = (episode.onset_evidence,) if episode.onset_evidence else ()
    criteria = (
        criterion("sm-back-pain", "Active low back pain episode", Finding(State.MET, episode.conditions)),
        criterion(
            "sm-duration-under-12-weeks",
            f"Back pain for less than {max_weeks} weeks",
            Finding(State.MET, onset_ev, episode.onset_note),
        ),
        criterion("sm-no-red-flags", "No red flags documented", Finding(State.MET)),
        criterion(
            "sm-nonspecific",
            "Nonspecific low back pain (no sciatica, radiculopathy, stenosis or axSpA on record)",
            Finding(State.MET),
        ),
    )
    params = {
        **base_params(facts, knowledge),
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
