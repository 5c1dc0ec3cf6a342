"""Medication classification and treatment periods from MedicationRequests and MedicationStatements.

(rev 2) A MedicationStatement counts like a MedicationRequest (over-the-counter NSAIDs are usually recorded
only that way) when its status is active, completed or intended; its period is effectivePeriod (start, end)
or effectiveDateTime, else dateAsserted as the start; an active statement without an end runs until today.

Classes (value sets): nsaid-analgesic, systemic-corticosteroid, immunosuppressant -- by RxNorm/ATC
code first, then by ingredient name in the medication text (RxNorm clinical drug codes are too many to
list). Non-systemic forms (topical, eye, ear, nasal, inhaled) never match by name.

The systemic-steroid duration is the merged span of all steroid requests: each request covers
[start, end] with start = earliest of authoredOn / validityPeriod.start / boundsPeriod.start and end =
latest of validityPeriod.end / boundsPeriod.end / start+boundsDuration / start+expectedSupplyDuration x
(1 + repeats); an active or on-hold request without an end runs until today; ends are capped at today.
Spans that overlap or touch (next start <= previous end + 1 day) are merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from cds_service.clinical.codes import concept_text, iter_codings
from cds_service.clinical.dates import DateSpan, add_months, add_years, parse_fhir_date
from cds_service.clinical.fhir_read import first_span, quantity, reference_of
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Evidence

MEDICATION_CLASSES = ("nsaid-analgesic", "systemic-corticosteroid", "immunosuppressant")
IGNORED_REQUEST_STATUSES = frozenset({"entered-in-error", "cancelled", "draft"})
READ_STATEMENT_STATUSES = frozenset({"active", "completed", "intended"})
CURRENT_REQUEST_STATUSES = frozenset({"active", "on-hold"})
_NON_SYSTEMIC = re.compile(
    r"\b(topical|cream|ointment|gel|lotion|patch|ophthalmic|eye|otic|ear|nasal|inhal\w*|inhaler|spray|drops?)\b"
)


@dataclass(frozen=True)
class MedicationUse:
    request: dict[str, Any]
    med_class: str
    text: str
    matched_by: str  # "code" or "name"
    start: date | None
    end: date | None  # capped at today; None when unknown
    start_text: str | None

    @property
    def reference(self) -> str:
        return reference_of(self.request)

    def evidence(self, value: str | None = None) -> Evidence:
        suffix = " (matched by name)" if self.matched_by == "name" else ""
        return Evidence(self.reference, f"{self.text}{suffix}", self.start_text, value)

    @property
    def current(self) -> bool:
        return self.request.get("status") in CURRENT_REQUEST_STATUSES


def medication_concept(request: dict[str, Any], medications: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The medication CodeableConcept, resolving medicationReference to a contained or listed Medication."""
    concept = request.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    ref = (request.get("medicationReference") or {}).get("reference")
    if not isinstance(ref, str):
        return None
    med: Any = None
    if ref.startswith("#"):
        med = next(
            (c for c in request.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]),
            None,
        )
    else:
        parts = ref.split("/")
        if len(parts) >= 2 and parts[-2] == "Medication":
            med = medications.get(parts[-1])
    if isinstance(med, dict) and isinstance(med.get("code"), dict):
        return med["code"]
    return None


def _texts(concept: dict[str, Any]) -> list[str]:
    texts = [concept.get("text")] + [c.get("display") for c in iter_codings(concept)]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def classify(concept: dict[str, Any], knowledge: Knowledge) -> list[tuple[str, str]]:
    """[(class, "code"|"name")] for every medication class the concept belongs to."""
    found: list[tuple[str, str]] = []
    for med_class in MEDICATION_CLASSES:
        vs = knowledge.valueset(med_class)
        if vs.match(concept):
            found.append((med_class, "code"))
            continue
        for text in _texts(concept):
            if not _NON_SYSTEMIC.search(text.lower()) and vs.match_name(text):
                found.append((med_class, "name"))
                break
    return found


def _duration_end(start: date, value: Any, multiplier: int = 1) -> date | None:
    q = quantity(value)
    if q is None or q[0] <= 0:
        return None
    number, unit = q
    amount = number * multiplier
    unit = (unit or "").lower()
    if unit in ("mo", "month", "months") and float(amount).is_integer():
        return add_months(start, int(amount))
    if unit in ("a", "year", "years") and float(amount).is_integer():
        return add_years(start, int(amount))
    days_per = {
        "d": 1,
        "day": 1,
        "days": 1,
        "wk": 7,
        "week": 7,
        "weeks": 7,
        "mo": 30,
        "a": 365,
        "h": 1 / 24,
    }.get(unit)
    return start + timedelta(days=amount * days_per) if days_per else None


def treatment_period(request: dict[str, Any], today: date) -> tuple[date | None, date | None, str | None]:
    """(start, end capped at today, start text) of one MedicationRequest; see module docstring."""
    dispense = request.get("dispenseRequest") or {}
    validity = dispense.get("validityPeriod") or {}
    starts: list[DateSpan] = []
    for value in (request.get("authoredOn"), validity.get("start")):
        span = parse_fhir_date(value)
        if span:
            starts.append(span)
    ends: list[date] = []
    end_span = parse_fhir_date(validity.get("end"))
    if end_span:
        ends.append(end_span.latest)
    for dosage in request.get("dosageInstruction") or []:
        repeat = ((dosage or {}).get("timing") or {}).get("repeat") or {}
        bounds = repeat.get("boundsPeriod") or {}
        span = parse_fhir_date(bounds.get("start"))
        if span:
            starts.append(span)
        span = parse_fhir_date(bounds.get("end"))
        if span:
            ends.append(span.latest)
    if not starts:
        return None, None, None
    first = min(starts, key=lambda s: s.earliest)
    start = first.earliest
    for dosage in request.get("dosageInstruction") or []:
        repeat = ((dosage or {}).get("timing") or {}).get("repeat") or {}
        end = _duration_end(start, repeat.get("boundsDuration"))
        if end:
            ends.append(end)
    repeats = dispense.get("numberOfRepeatsAllowed")
    multiplier = 1 + (repeats if isinstance(repeats, int) and not isinstance(repeats, bool) and repeats > 0 else 0)
    end = _duration_end(start, dispense.get("expectedSupplyDuration"), multiplier)
    if end:
        ends.append(end)
    end_day: date | None = max(ends) if ends else None
    if request.get("status") in CURRENT_REQUEST_STATUSES and (end_day is None or end_day > today):
        end_day = today
    if end_day is not None:
        end_day = min(end_day, today)
        if end_day < start:
            end_day = None
    return start, end_day, first.text


def statement_period(statement: dict[str, Any], today: date) -> tuple[date | None, date | None, str | None]:
    """(start, end capped at today, start text) of one MedicationStatement; see module docstring."""
    period = statement.get("effectivePeriod") or {}
    first = (
        parse_fhir_date(statement.get("effectiveDateTime"))
        or parse_fhir_date(period.get("start"))
        or parse_fhir_date(statement.get("dateAsserted"))
    )
    if first is None:
        return None, None, None
    start = first.earliest
    ends: list[date] = []
    end_span = parse_fhir_date(period.get("end"))
    if end_span:
        ends.append(end_span.latest)
    for dosage in statement.get("dosage") or []:
        bounds = (((dosage or {}).get("timing") or {}).get("repeat") or {}).get("boundsPeriod") or {}
        span = parse_fhir_date(bounds.get("end"))
        if span:
            ends.append(span.latest)
    end_day: date | None = max(ends) if ends else None
    if statement.get("status") == "active" and (end_day is None or end_day > today):
        end_day = today
    if end_day is not None:
        end_day = min(end_day, today)
        if end_day < start:
            end_day = None
    return start, end_day, first.text


def medication_uses(
    records: list[dict[str, Any]], medications: dict[str, dict[str, Any]], knowledge: Knowledge, today: date
) -> list[MedicationUse]:
    """Classified uses from MedicationRequests and MedicationStatements (statuses filtered per type)."""
    uses: list[MedicationUse] = []
    for request in records:
        is_statement = request.get("resourceType") == "MedicationStatement"
        if is_statement and request.get("status") not in READ_STATEMENT_STATUSES:
            continue
        if not is_statement and request.get("status") in IGNORED_REQUEST_STATUSES:
            continue
        concept = medication_concept(request, medications)
        if concept is None:
            continue
        text = concept_text(concept) or reference_of(request)
        start, end, start_text = statement_period(request, today) if is_statement else treatment_period(request, today)
        for med_class, matched_by in classify(concept, knowledge):
            uses.append(MedicationUse(request, med_class, text, matched_by, start, end, start_text))
    return uses


def merged_spans(uses: list[MedicationUse]) -> list[tuple[date, date, list[MedicationUse]]]:
    """Merge overlapping/adjacent treatment spans (uses without a known start and end are left out)."""
    spans = sorted((u for u in uses if u.start and u.end), key=lambda u: u.start)  # type: ignore[arg-type, return-value]
    merged: list[tuple[date, date, list[MedicationUse]]] = []
    for use in spans:
        assert use.start and use.end
        if merged and use.start <= merged[-1][1] + timedelta(days=1):
            start, end, members = merged[-1]
            merged[-1] = (start, max(end, use.end), [*members, use])
        else:
            merged.append((use.start, use.end, [use]))
    return merged


def first_date(resource: dict[str, Any], *paths: str) -> DateSpan | None:
    return first_span(resource, *paths)[0]
