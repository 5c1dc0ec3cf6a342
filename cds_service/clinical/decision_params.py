"""Shared building blocks for Decisions: the params every card template can rely on, evidence text,
criteria from findings, and the red-flag structure (see docs/clinical-logic.md, "Decision parameters")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cds_service.clinical.facts import CATEGORY_ORDER, Finding, PatientFacts, RedFlag
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Criterion, Evidence


def evidence_line(evidence: Evidence) -> str:
    """'Fever (SNOMED 386661006): 38.4 Cel, 2024-05-01 [Observation/7]' -- plain text for card details."""
    text = evidence.text
    if evidence.value:
        text += f": {evidence.value}"
    if evidence.date:
        text += f", {evidence.date}"
    return f"{text} [{evidence.reference}]"


def criterion(cid: str, *args: Any, **label_params: Any) -> Criterion:
    """criterion(id, finding, **label_params); the words are in cards/labels/criteria.yaml under the id.

    The older form criterion(id, label_text, finding) is accepted and the text ignored (the label file
    is the one owner of the wording)."""
    finding = args[-1]
    if not isinstance(finding, Finding):
        raise TypeError(f"criterion {cid!r}: expected a Finding, got {type(finding).__name__}")
    return Criterion(cid, finding.state, finding.evidence, finding.note, dict(label_params))


def criterion_params(criteria: Iterable[Criterion]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "label_params": dict(c.label_params),
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
        "patient_age": facts.age_text,
        "patient_sex": facts.sex,
        "age_over_50": facts.age_range is not None and facts.age_range[0] > knowledge.thresholds.age_mention_years,
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
            "label_params": dict(flag.label_params),
            "evidence": [evidence_line(e) for e in flag.finding.evidence],
        }

    categories = list(dict.fromkeys(f.category for f in ordered))
    # ids of cards/labels/imaging.yaml "preferred" (ACR Appropriateness Criteria Low Back Pain 2021)
    preferred = [{"category": c, "id": c} for c in categories]
    return {
        "red_flags": [as_dict(f) for f in ordered],
        "red_flag_ids": [f.id for f in ordered],
        "red_flag_categories": categories,
        "cauda_equina_features": [as_dict(f) for f in ordered if f.category == "cauda-equina"],
        "preferred_imaging": preferred,
    }


def red_flag_criteria(facts: PatientFacts) -> tuple[Criterion, ...]:
    """One criterion per red flag; id "red-flag-<flag id>" (label: cards/labels/red-flags.yaml)."""
    return tuple(criterion(f"red-flag-{flag.id}", flag.finding, **flag.label_params) for flag in facts.red_flags)
