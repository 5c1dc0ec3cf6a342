"""Axial spondyloarthritis recognition and referral (NICE NG65; spec section 3).

Entry: low back pain that started before 45 and has lasted more than 3 months. Then count the 9 NICE
criteria (only "met" counts; "not documented" is shown, never counted as "not met"):
>= 4 -> refer; exactly 3 + HLA-B27 positive -> refer; exactly 3 + no HLA-B27 result -> test HLA-B27;
exactly 3 + HLA-B27 negative, or < 3 -> no card. ASAS features that NICE does not count are listed as
supporting information (criterion ids prefixed ``asas-``). Skipped when axSpA is already diagnosed or a
rheumatology referral exists in the last 12 months (config).

Comparisons: "before 45/35" = age in completed years at onset < 45/35 (exactly 45 is not before);
"more than 3 months" = onset + 3 calendar months < today (exactly 3 months is not more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_service.clinical import labs
from cds_service.clinical.citations import ASAS_2009, ASAS_EULAR_2022, ASAS_IBP_2009, NICE_NG65
from cds_service.clinical.dates import add_months
from cds_service.clinical.decision_params import base_params, criterion, criterion_params
from cds_service.clinical.facts import Finding, PatientFacts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Criterion, Decision, Evidence, State, SuggestionSpec
from cds_service.clinical.orders import (
    OrderContext,
    SuggestionBuildError,
    order_hla_b27,
    refer_rheumatology,
    refer_rheumatology_with_labs,
)

CITATIONS = (NICE_NG65, ASAS_2009, ASAS_IBP_2009, ASAS_EULAR_2022)
REFER, TEST_HLA_B27 = "refer", "test-hla-b27"
SUSPECTED = frozenset({REFER, TEST_HLA_B27})
LAB_NAMES = {"crp": "CRP", "hla-b27": "HLA-B27"}  # lab abbreviations (not prose): also in orders.LABS


@dataclass(frozen=True)
class AxSpaAssessment:
    """The full NICE NG65 work-up; ``outcome`` is refer / test-hla-b27 or why no card is shown."""

    outcome: str  # refer, test-hla-b27, no-card, entry-not-met, skip-diagnosed, skip-referred
    entry: tuple[Criterion, ...] = ()
    nice: tuple[Criterion, ...] = ()
    asas: tuple[Criterion, ...] = ()
    referral_reason: str | None = None  # "4-or-more" / "3-and-hla-b27-positive"
    skip_evidence: tuple[Evidence, ...] = ()

    @property
    def suspected(self) -> bool:
        return self.outcome in SUSPECTED

    @property
    def met_count(self) -> int:
        return sum(1 for c in self.nice if c.state is State.MET)

    @property
    def not_documented_count(self) -> int:
        return sum(1 for c in self.nice if c.state is State.NOT_DOCUMENTED)


def _age_before(facts: PatientFacts, limit: int, criterion_id: str) -> Criterion:
    """Onset before *limit* (completed years at onset < limit). (rev 2) With a partial birthDate the age at
    onset is a range: decided only when the whole range is on one side, else not documented."""
    episode = facts.episode
    params = {"age": limit}
    if episode.onset_age_range is None:
        why = "birth date not documented" if facts.birth_date is None else "back pain onset not documented"
        return Criterion(criterion_id, State.NOT_DOCUMENTED, (), why, params)
    evidence = (episode.onset_evidence,) if episode.onset_evidence else ()
    low, high = episode.onset_age_range
    suffix = f"; {episode.onset_note}" if episode.onset_note else ""
    if high < limit:
        state = State.MET
    elif low >= limit:
        state = State.NOT_MET
    else:
        note = f"age at onset {low}–{high}: the birth date is partial" + suffix
        return Criterion(criterion_id, State.NOT_DOCUMENTED, evidence, note, params)
    age = str(low) if low == high else f"{low}–{high}"
    return Criterion(criterion_id, state, evidence, f"age at onset {age}" + suffix, params)


def entry_criteria(
    facts: PatientFacts, knowledge: Knowledge, order_reason: Evidence | None = None
) -> tuple[Criterion, ...]:
    t = knowledge.thresholds
    episode = facts.episode
    pain_evidence = episode.conditions + ((order_reason,) if order_reason else ())
    back_pain = Criterion(
        "entry-back-pain",
        State.MET if pain_evidence else State.NOT_DOCUMENTED,
        pain_evidence,
    )
    onset = _age_before(facts, t.axspa_entry_onset_age_years, "entry-onset-before-45")
    months = {"months": t.axspa_entry_min_months}
    if episode.onset is None:
        duration = Criterion("entry-duration-over-3-months", State.NOT_DOCUMENTED, (), "onset not documented", months)
    else:
        lasted = add_months(episode.onset, t.axspa_entry_min_months) < facts.today
        evidence = (episode.onset_evidence,) if episode.onset_evidence else ()
        note = f"onset {episode.onset.isoformat()}" + (f"; {episode.onset_note}" if episode.onset_note else "")
        duration = Criterion(
            "entry-duration-over-3-months", State.MET if lasted else State.NOT_MET, evidence, note, months
        )
    return back_pain, onset, duration


def nice_criteria(facts: PatientFacts, knowledge: Knowledge) -> tuple[Criterion, ...]:
    t = knowledge.thresholds
    s = facts.symptom
    return (
        _age_before(facts, t.axspa_early_onset_age_years, "nice-onset-before-35"),
        criterion("nice-night-waking", s("night-waking")),
        criterion("nice-buttock-pain", s("buttock-pain")),
        criterion("nice-improves-with-movement", s("improves-with-movement")),
        criterion("nice-nsaid-response", s("nsaid-response")),
        criterion("nice-family-history", s("family-history")),
        criterion("nice-arthritis", s("arthritis")),
        criterion("nice-enthesitis", s("enthesitis")),
        criterion("nice-psoriasis", s("psoriasis")),
    )


def _lab_finding(result: labs.LabResult, positive: str, negative: str) -> Finding:
    evidence = (result.evidence,) if result.evidence else ()
    if result.state == positive:
        return Finding(State.MET, evidence, result.note)
    if result.state == negative:
        return Finding(State.NOT_MET, evidence, result.note)
    return Finding(State.NOT_DOCUMENTED, evidence, result.note)


def _ibp(facts: PatientFacts) -> Finding:
    """ASAS inflammatory back pain: >= 4 of 5 parameters (onset < 40, insidious onset, improvement with
    exercise, no improvement with rest, pain at night)."""
    ages = facts.episode.onset_age_range
    evidence = (facts.episode.onset_evidence,) if facts.episode.onset_evidence else ()
    if ages is None or ages[0] < 40 <= ages[1]:
        onset = Finding(State.NOT_DOCUMENTED)
    else:
        onset = Finding(State.MET if ages[1] < 40 else State.NOT_MET, evidence)
    parts = {
        "age at onset < 40": onset,
        "insidious onset": facts.symptom("insidious-onset"),
        "improvement with exercise": facts.symptom("improves-with-movement"),
        "no improvement with rest": facts.symptom("no-improvement-with-rest"),
        "pain at night": facts.symptom("night-waking"),
    }
    met = [name for name, f in parts.items() if f.state is State.MET]
    unknown = [name for name, f in parts.items() if f.state is State.NOT_DOCUMENTED]
    evidence = tuple(e for f in parts.values() if f.state is State.MET for e in f.evidence)
    note = f"{len(met)} of 5 ASAS parameters met" + (f"; not documented: {', '.join(unknown)}" if unknown else "")
    if len(met) >= 4:
        return Finding(State.MET, evidence, note)
    if len(met) + len(unknown) < 4:
        return Finding(State.NOT_MET, evidence, note)
    return Finding(State.NOT_DOCUMENTED, evidence, note)


def asas_features(facts: PatientFacts) -> tuple[Criterion, ...]:
    s = facts.symptom
    return (
        criterion("asas-elevated-crp", _lab_finding(facts.crp, labs.ELEVATED, labs.NOT_ELEVATED)),
        criterion("asas-hla-b27", _lab_finding(facts.hla_b27, labs.POSITIVE, labs.NEGATIVE)),
        criterion("asas-uveitis", s("uveitis")),
        criterion("asas-inflammatory-bowel-disease", s("inflammatory-bowel-disease")),
        criterion("asas-dactylitis", s("dactylitis")),
        criterion("asas-sacroiliitis", s("sacroiliitis")),
        criterion("asas-inflammatory-back-pain", _ibp(facts)),
        criterion("asas-morning-stiffness", s("morning-stiffness")),
    )


def assess_axspa(facts: PatientFacts, knowledge: Knowledge, order_reason: Evidence | None = None) -> AxSpaAssessment:
    if facts.axspa_diagnosis:
        return AxSpaAssessment("skip-diagnosed", skip_evidence=facts.axspa_diagnosis)
    if facts.rheumatology_referrals:
        return AxSpaAssessment("skip-referred", skip_evidence=facts.rheumatology_referrals)
    entry = entry_criteria(facts, knowledge, order_reason)
    nice = nice_criteria(facts, knowledge)
    asas = asas_features(facts)
    if any(c.state is not State.MET for c in entry):
        return AxSpaAssessment("entry-not-met", entry, nice, asas)
    met = sum(1 for c in nice if c.state is State.MET)
    hla = facts.hla_b27.state
    if met >= 4:
        return AxSpaAssessment(REFER, entry, nice, asas, "4-or-more")
    if met == 3 and hla == labs.POSITIVE:
        return AxSpaAssessment(REFER, entry, nice, asas, "3-and-hla-b27-positive")
    if met == 3 and hla == labs.NOT_DOCUMENTED:
        return AxSpaAssessment(TEST_HLA_B27, entry, nice, asas)
    return AxSpaAssessment("no-card", entry, nice, asas)


def axspa_params(facts: PatientFacts, assessment: AxSpaAssessment) -> dict[str, Any]:
    labs_to_order = [
        lab for lab, recent in (("crp", facts.crp_recent), ("hla-b27", facts.hla_b27_recent)) if not recent
    ]
    return {
        "axspa_outcome": assessment.outcome,
        "nice_met_count": assessment.met_count,
        "nice_not_documented_count": assessment.not_documented_count,
        "nice_criteria": criterion_params(assessment.nice),
        "asas_features": criterion_params(assessment.asas),
        "entry_criteria": criterion_params(assessment.entry),
        "crp": facts.crp.as_params(),
        "hla_b27": facts.hla_b27.as_params(),
        "crp_state": facts.crp.state,
        "hla_b27_state": facts.hla_b27.state,
        "labs_to_order": labs_to_order,
        "labs_to_order_text": " and ".join(LAB_NAMES[lab] for lab in labs_to_order),
        "referral_reason": assessment.referral_reason,
    }


def _supporting_references(assessment: AxSpaAssessment) -> list[str]:
    refs = [
        e.reference
        for c in (*assessment.entry, *assessment.nice, *assessment.asas)
        if c.state is State.MET
        for e in c.evidence
    ]
    return [r for r in dict.fromkeys(r.split("#")[0] for r in refs) if not r.startswith("Patient/")]


def _reason_codes(facts: PatientFacts) -> list[dict[str, Any]]:
    """The referral's reasonCode: the back pain conditions' codes, plus a coded 'suspected axSpA' text."""
    reasons: list[dict[str, Any]] = []
    for cond in facts.back_pain_conditions.values():
        if isinstance(cond.get("code"), dict) and cond["code"] not in reasons:
            reasons.append(cond["code"])
    reasons.append({"text": "Suspected axial spondyloarthritis (NICE NG65 criteria met)"})
    return reasons


def evaluate_axspa(facts: PatientFacts, knowledge: Knowledge, ctx: OrderContext) -> list[Decision]:
    assessment = assess_axspa(facts, knowledge)
    if not assessment.suspected:
        return []
    params = {**base_params(facts, knowledge), **axspa_params(facts, assessment)}
    reasons, supporting = _reason_codes(facts), _supporting_references(assessment)
    suggestions: list[SuggestionSpec] = []
    try:
        if assessment.outcome == REFER:
            suggestions.append(refer_rheumatology(ctx, reasons, supporting))
            if params["labs_to_order"]:
                suggestions.append(refer_rheumatology_with_labs(ctx, params["labs_to_order"], reasons, supporting))
        else:
            suggestions.append(order_hla_b27(ctx, reasons, supporting))
    except SuggestionBuildError:
        suggestions = []
    return [
        Decision(
            topic="axspa-referral" if assessment.outcome == REFER else "axspa-hla-b27",
            rule="axspa.refer" if assessment.outcome == REFER else "axspa.test-hla-b27",
            citations=CITATIONS,
            criteria=(*assessment.entry, *assessment.nice, *assessment.asas),
            params=params,
            suggestions=tuple(suggestions),
        )
    ]
