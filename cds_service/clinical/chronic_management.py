"""Chronic nonspecific low back pain (spec section 4, rev 2): the `chronic-management` card.

Fires on patient-view for nonspecific low back pain of 12 weeks or more (days >= self_management_max_weeks
x 7, the boundary where the self-management card stops), in an adult (age >= chronic_management_min_age_years),
with no red flag met and no axSpA card. The advice (NICE NG59 2016/2020; ACP 2017, and who says what where
they differ) lives in cards/chronic-management.yaml.

Suggestion: a physiotherapy referral for an exercise programme when no physiotherapy (referral or procedure,
any non-cancelled status) is recorded within the last exercise_programme_lookback_months calendar months.
"""

from __future__ import annotations

from typing import Any

from cds_service.clinical.citations import ACP_2017, NICE_NG59, NICE_QS155
from cds_service.clinical.dates import within_last_months
from cds_service.clinical.decision_params import base_params, criterion, evidence_line
from cds_service.clinical.facts import Finding, PatientFacts
from cds_service.clinical.fhir_read import evidence_for, first_span
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Decision, Evidence, PatientRecord, State, SuggestionSpec
from cds_service.clinical.orders import OrderContext, SuggestionBuildError, refer_physiotherapy
from cds_service.clinical.self_management import duration_evidence, nonspecific_episode, red_flag_criterion

CITATIONS = (NICE_NG59, NICE_QS155, ACP_2017)
EXCLUDED_STATUS = frozenset({"entered-in-error", "revoked", "not-done"})
#: Where the date of a physiotherapy record is read from, per resource type.
DATE_PATHS = {
    "ServiceRequest": ("occurrenceDateTime", "occurrencePeriod.start", "authoredOn"),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
}
REASON_TEXT = "Chronic nonspecific low back pain: exercise programme (NICE NG59)"


def recent_physiotherapy(record: PatientRecord, facts: PatientFacts, knowledge: Knowledge) -> tuple[Evidence, ...]:
    """Physiotherapy referrals/procedures dated within the look-back window (undated ones do not count)."""
    physio = knowledge.valueset("physiotherapy")
    months = knowledge.thresholds.exercise_programme_lookback_months
    found: list[Evidence] = []
    for resource in record.resources:
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if rtype not in DATE_PATHS or resource.get("status") in EXCLUDED_STATUS:
            continue
        coding = physio.match(resource.get("code"))
        if coding is None:
            continue
        span = first_span(resource, *DATE_PATHS[rtype])[0]
        if span is not None and within_last_months(span, facts.today, months):
            found.append(evidence_for(resource, coding, span))
    return tuple(found)


def _reason_codes(facts: PatientFacts) -> list[dict[str, Any]]:
    """The referral's reasonCode: the back pain conditions' codes, plus what the referral is for."""
    reasons: list[dict[str, Any]] = []
    for cond in facts.back_pain_conditions.values():
        if isinstance(cond.get("code"), dict) and cond["code"] not in reasons:
            reasons.append(cond["code"])
    reasons.append({"text": REASON_TEXT})
    return reasons


def evaluate_chronic_management(
    facts: PatientFacts,
    record: PatientRecord,
    knowledge: Knowledge,
    ctx: OrderContext,
    axspa_card_shown: bool,
) -> list[Decision]:
    t = knowledge.thresholds
    episode = facts.episode
    if axspa_card_shown or not nonspecific_episode(facts) or episode.duration_days is None:
        return []
    if episode.duration_days < 7 * t.self_management_max_weeks:
        return []
    # adults only; a partial birthDate whose age range may be under the threshold is not shown (spec section 1)
    if facts.age_range is None or facts.age_range[0] < t.chronic_management_min_age_years:
        return []
    physio = recent_physiotherapy(record, facts, knowledge)
    red_flags, red_flag_params = red_flag_criterion("cm-no-red-flags", facts)
    criteria = (
        criterion("cm-back-pain", Finding(State.MET, episode.conditions)),
        criterion(
            "cm-duration-12-weeks-or-more",
            Finding(State.MET, duration_evidence(facts), episode.onset_note),
            weeks=t.self_management_max_weeks,
        ),
        red_flags,
        criterion("cm-nonspecific", Finding(State.MET)),
        criterion(
            "cm-physiotherapy-recent",
            Finding(State.MET, physio) if physio else Finding(State.NOT_DOCUMENTED),
            months=t.exercise_programme_lookback_months,
        ),
    )
    suggestions: tuple[SuggestionSpec, ...] = ()
    if not physio:
        try:
            pain_refs = [e.reference for e in episode.conditions]
            suggestions = (refer_physiotherapy(ctx, _reason_codes(facts), pain_refs),)
        except SuggestionBuildError:
            suggestions = ()
    params = {
        **base_params(facts, knowledge),
        **red_flag_params,
        "min_weeks": t.self_management_max_weeks,
        "physiotherapy_lookback_months": t.exercise_programme_lookback_months,
        "recent_physiotherapy": [evidence_line(e) for e in physio],
        "physiotherapy_suggested": bool(suggestions),
    }
    return [
        Decision(
            topic="chronic-management",
            rule="chronic-management.nonspecific-lbp",
            citations=CITATIONS,
            criteria=criteria,
            params=params,
            suggestions=suggestions,
        )
    ]
