"""The back pain episode (spec section 1): active LBP/radicular Conditions, onset, duration, age at onset."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from cds_service.clinical.dates import add_years, completed_years, parse_fhir_date
from cds_service.clinical.facts.model import Episode
from cds_service.clinical.fhir_read import (
    age_in_years,
    condition_active,
    evidence_for,
    first_span,
    reference_of,
    with_display,
)
from cds_service.clinical.model import Evidence

if TYPE_CHECKING:
    from cds_service.clinical.facts.builder import Builder

BACK_PAIN_VALUESETS = ("low-back-pain", "radicular-pain")


def build_episode(b: Builder) -> tuple[Episode, dict[str, dict[str, Any]]]:
    evidence: list[Evidence] = []
    by_ref: dict[str, dict[str, Any]] = {}
    candidates: list[tuple[date, str, Evidence]] = []
    recorded: list[tuple[date, Evidence]] = []
    notes: list[str] = []
    for cond in b.conditions:
        coding = next(
            (
                with_display(c, b.k.valueset(vs_id))
                for vs_id in BACK_PAIN_VALUESETS
                if (c := b.k.match(vs_id, cond.get("code")))
            ),
            None,
        )
        if coding is None:
            continue
        by_ref[reference_of(cond)] = cond
        if not condition_active(cond):
            continue
        span, path = first_span(cond, "onsetDateTime", "onsetPeriod.start")
        ev = evidence_for(cond, coding, span)
        evidence.append(ev)
        if span and path:
            candidates.append((span.earliest, path, ev))
        years = age_in_years(cond.get("onsetAge"))
        if years is not None:
            if b.birth_latest:
                # onsetAge counts from the birthday; with a partial birthDate the earliest birthday gives the
                # earliest plausible onset (longest duration), consistent with "onset = earliest"
                born = b.birth_earliest or b.birth_latest
                whole = int(years)
                onset_day = add_years(born, whole) + timedelta(days=int((years - whole) * 365.25))
                candidates.append(
                    (onset_day, "onsetAge", evidence_for(cond, coding, None, value=f"onset at age {years:g}"))
                )
            else:
                notes.append(f"{reference_of(cond)} has onsetAge but birthDate is missing")
        rec = parse_fhir_date(cond.get("recordedDate"))
        if rec:
            recorded.append((rec.earliest, evidence_for(cond, coding, rec)))
    q_span, q_answer, q_note = b.qr.date_value("pain-onset-date")
    if q_note:
        notes.append(q_note)
    if q_span and q_answer:
        candidates.append((q_span.earliest, "questionnaire", q_answer.evidence("Questionnaire: pain onset date")))
    onset = source = onset_ev = None
    if candidates:
        onset, source, onset_ev = min(candidates, key=lambda c: c[0])
    elif recorded:
        onset, onset_ev = min(recorded, key=lambda c: c[0])
        source = "recordedDate"
        notes.append("onset not recorded: the date the condition was recorded is used instead")
    duration = None
    onset_age = None
    onset_range = None
    if onset is not None:
        duration = (b.today - onset).days
        if duration < 0:
            notes.append("onset date lies in the future; duration set to 0")
            duration = 0
        if b.birth_latest:
            low = completed_years(b.birth_latest, onset)
            high = completed_years(b.birth_earliest or b.birth_latest, onset)
            onset_range = (low, high)
            onset_age = low if low == high else None
    return (
        Episode(tuple(evidence), onset, source, onset_ev, "; ".join(notes) or None, duration, onset_age, onset_range),
        by_ref,
    )
