"""Shared building blocks for Decisions: the params every card template can rely on, evidence text,
criteria from findings, and the red-flag structure (see docs/clinical-logic.md, "Decision parameters")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cds_service.clinical.facts import Finding, PatientFacts, RedFlag
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Criterion, Evidence

CATEGORY_ORDER = ("cauda-equina", "neurological-deficit", "malignancy", "infection", "fracture")

# Preferred imaging per red-flag category (ACR Appropriateness Criteria Low Back Pain 2021).
PREFERRED_IMAGING = {
    "cauda-equina": "Emergency assessment and urgent MRI of the lumbar spine",
    "neurological-deficit": "MRI of the lumbar spine without contrast",
    "malignancy": "MRI of the lumbar spine without and with contrast",
    "infection": "MRI of the lumbar spine without and with contrast",
    "fracture": "Lumbar spine radiograph first (CT or MRI if the radiograph is inconclusive)",
}


def evidence_line(evidence: Evidence) -> str:
    """'Fever (SNOMED 386661006): 38.4 Cel, 2024-05-01 [Observation/7]' -- plain text for card details."""
    text = evidence.text
    if evidence.value:
        text += f": {evidence.value}"
    if evidence.date:
        text += f", {evidence.date}"
    return f"{text} [{evidence.reference}]"


def criterion(cid: str, label: str, finding: Finding) -> Criterion:
    return Criterion(cid, label, finding.state, finding.evidence, finding.note)


def criterion_params(criteria: Iterable[Criterion]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "label": c.label,
            "state": c.state.value,
            "evidence": [evidence_line(e) for e in c.evidence],
            "note": c.note,
        }
        for c in criteria
    ]


def base_params(facts: PatientFacts, knowledge: Knowledge) -> dict[str, Any]:
    """Keys present on every Decision."""
    episode = facts.episode
    return {
        "partial": facts.partial,
        "missing": list(facts.missing),
        "skipped_resources": list(facts.skipped),
        "patient_age": facts.age,
        "patient_sex": facts.sex,
        "age_over_50": facts.age is not None and facts.age > knowledge.thresholds.age_mention_years,
        "duration_days": episode.duration_days,
        "duration_weeks": episode.duration_weeks,
        "onset_date": episode.onset.isoformat() if episode.onset else None,
        "onset_source": episode.onset_source,
        "onset_from_recorded_date": episode.onset_from_recorded_date,
        "onset_age": episode.onset_age,
        "radicular": facts.radicular.met,
    }


def red_flag_params(flags: list[RedFlag]) -> dict[str, Any]:
    """The red-flag structure shared by red-flag, cauda-equina and imaging-appropriate cards."""
    ordered = sorted(flags, key=lambda f: CATEGORY_ORDER.index(f.category))

    def as_dict(flag: RedFlag) -> dict[str, Any]:
        return {
            "id": flag.id,
            "category": flag.category,
            "display": flag.display,
            "evidence": [evidence_line(e) for e in flag.finding.evidence],
        }

    categories = list(dict.fromkeys(f.category for f in ordered))
    preferred = [{"category": c, "text": PREFERRED_IMAGING[c]} for c in categories]
    return {
        "red_flags": [as_dict(f) for f in ordered],
        "red_flag_names": [f.display for f in ordered],
        "red_flag_categories": categories,
        "cauda_equina_features": [as_dict(f) for f in ordered if f.category == "cauda-equina"],
        "preferred_imaging": preferred,
        "preferred_imaging_text": "; ".join(dict.fromkeys(p["text"] for p in preferred)),
    }


def red_flag_criteria(facts: PatientFacts) -> tuple[Criterion, ...]:
    return tuple(criterion(f"red-flag-{flag.id}", flag.display, flag.finding) for flag in facts.red_flags)
