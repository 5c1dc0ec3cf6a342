"""CRP and HLA-B27 result interpretation (spec section 1, "Labs").

CRP is elevated when above the result's own referenceRange.high; else by interpretation H/HH; else
when above the configured limit in mg/L (mg/dL x10). A result we cannot read (unknown unit, no range,
no interpretation) is "not documented" -- never "normal". (rev 2) High-sensitivity CRP is judged against
the mg/L limit only: its reference ranges and H flags are cardiovascular-risk bands, not inflammation.
HLA-B27 is positive/negative from valueCodeableConcept (SNOMED 10828004 / 260385009, LOINC LA6576-8 /
LA6577-6), valueString or the concept's text ("positive/detected/POS/+/present", "negative/not
detected/NEG/-/absent", any case), or interpretation POS/NEG; only final/amended/corrected results count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.clinical.codes import SNOMED, iter_codings, normalize_system
from cds_service.clinical.dates import DateSpan, within_last_months
from cds_service.clinical.fhir_read import evidence_for, interpretation_codes, observation_span, quantity
from cds_service.clinical.model import Evidence

ELEVATED, NOT_ELEVATED = "elevated", "not-elevated"
POSITIVE, NEGATIVE = "positive", "negative"
NOT_DOCUMENTED = "not-documented"

# Mass concentration units convertible to mg/L (UCUM codes and common free-text spellings).
_TO_MG_PER_L = {
    "mg/l": 1.0,
    "mg/dl": 10.0,
    "ug/ml": 1.0,
    "µg/ml": 1.0,
    "mcg/ml": 1.0,
    "g/l": 1000.0,
    "mg/100ml": 10.0,
}
# SNOMED (spec) and the LOINC answer codes laboratories use for presence results (LA6576-8 Positive,
# LA6577-6 Negative; beyond the spec's list, same meaning)
_POSITIVE_CODES = {(SNOMED, "10828004"), ("http://loinc.org", "LA6576-8")}
_NEGATIVE_CODES = {(SNOMED, "260385009"), ("http://loinc.org", "LA6577-6")}
_POSITIVE_STRINGS = {"positive", "detected", "pos", "+", "present"}
_NEGATIVE_STRINGS = {"negative", "not detected", "neg", "-", "absent", "not present"}
HLA_B27_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True)
class LabResult:
    state: str  # elevated / not-elevated / positive / negative / not-documented
    evidence: Evidence | None = None
    date: DateSpan | None = None
    value_text: str | None = None
    mg_per_l: float | None = None
    note: str | None = None

    def as_params(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "value": self.value_text,
            "date": self.date.text if self.date else None,
            "reference": self.evidence.reference if self.evidence else None,
            "note": self.note,
        }


def to_mg_per_l(value: float, unit: str | None) -> float | None:
    if unit is None:
        return None
    factor = _TO_MG_PER_L.get(unit.strip().lower().replace(" ", ""))
    return value * factor if factor is not None else None


def _format_number(value: float) -> str:
    return f"{value:g}"


def interpret_crp(observation: dict[str, Any], limit_mg_per_l: float, *, high_sensitivity: bool = False) -> LabResult:
    span = observation_span(observation)
    q = quantity(observation.get("valueQuantity"))
    value_text = f"{_format_number(q[0])} {q[1] or ''}".strip() if q else None
    text = "C-reactive protein (high sensitivity)" if high_sensitivity else "C-reactive protein"
    evidence = evidence_for(observation, None, span, value=value_text, text=text)
    mg = to_mg_per_l(*q) if q else None

    if high_sensitivity:
        if mg is None:
            why = "without a value" if q is None else f"in unit {q[1]!r}, which cannot be converted to mg/L"
            return LabResult(NOT_DOCUMENTED, evidence if q else None, span, value_text, None, f"hs-CRP result {why}")
        limit = _format_number(limit_mg_per_l)
        note = (
            f"high-sensitivity CRP compared with {limit} mg/L only (its reference range is a cardiovascular-risk band)"
        )
        return LabResult(ELEVATED if mg > limit_mg_per_l else NOT_ELEVATED, evidence, span, value_text, mg, note)

    if q is not None:
        for ref_range in observation.get("referenceRange") or []:
            high = quantity((ref_range or {}).get("high"))
            if high is None:
                continue
            high_value, high_unit = high
            high_unit = high_unit or q[1]
            if mg is not None and to_mg_per_l(high_value, high_unit) is not None:
                elevated = mg > to_mg_per_l(high_value, high_unit)  # type: ignore[operator]
            elif high_unit == q[1]:
                elevated = q[0] > high_value
            else:
                continue
            state = ELEVATED if elevated else NOT_ELEVATED
            limit = f"{_format_number(high_value)} {high_unit or ''}".strip()
            note = f"compared with the result's reference range (upper limit {limit})"
            return LabResult(state, evidence, span, value_text, mg, note)

    codes = interpretation_codes(observation)
    if codes & {"H", "HH", "HU"}:
        return LabResult(ELEVATED, evidence, span, value_text, mg, "laboratory flagged the result as high")
    if codes & {"N", "L", "LL", "LU"}:
        return LabResult(NOT_ELEVATED, evidence, span, value_text, mg, "laboratory flagged the result as not high")

    if mg is not None:
        state = ELEVATED if mg > limit_mg_per_l else NOT_ELEVATED
        return LabResult(
            state,
            evidence,
            span,
            value_text,
            mg,
            f"compared with {_format_number(limit_mg_per_l)} mg/L (no reference range on the result)",
        )
    if q is not None:
        return LabResult(
            NOT_DOCUMENTED,
            evidence,
            span,
            value_text,
            None,
            f"unit {q[1]!r} cannot be converted to mg/L and the result has no reference range",
        )
    return LabResult(NOT_DOCUMENTED, None, span, None, None, "CRP result without a value")


def interpret_hla_b27(observation: dict[str, Any]) -> LabResult:
    span = observation_span(observation)
    state = NOT_DOCUMENTED
    value_text: str | None = None
    concept = observation.get("valueCodeableConcept")
    for coding in iter_codings(concept):
        key = (normalize_system(coding.get("system")), str(coding.get("code", "")).strip())
        if key in _POSITIVE_CODES or str(coding.get("code", "")).upper() == "POS":
            state, value_text = POSITIVE, coding.get("display") or "Positive"
        elif key in _NEGATIVE_CODES or str(coding.get("code", "")).upper() == "NEG":
            state, value_text = NEGATIVE, coding.get("display") or "Negative"
        if state != NOT_DOCUMENTED:
            break
    # free text: valueString, the text of a valueCodeableConcept, or a local coding's display
    texts = [observation.get("valueString")]
    if isinstance(concept, dict):
        texts += [concept.get("text")] + [c.get("display") for c in iter_codings(concept)]
    for free_text in texts:
        if state != NOT_DOCUMENTED or not isinstance(free_text, str):
            continue
        text = " ".join(free_text.strip().lower().rstrip(".").split())
        if text in _POSITIVE_STRINGS:
            state, value_text = POSITIVE, free_text
        elif text in _NEGATIVE_STRINGS:
            state, value_text = NEGATIVE, free_text
    if state == NOT_DOCUMENTED:
        codes = interpretation_codes(observation)
        if "POS" in codes:
            state, value_text = POSITIVE, "positive (interpretation)"
        elif "NEG" in codes:
            state, value_text = NEGATIVE, "negative (interpretation)"
    if state == NOT_DOCUMENTED:
        return LabResult(
            NOT_DOCUMENTED, None, span, None, None, "HLA-B27 result could not be read as positive or negative"
        )
    return LabResult(state, evidence_for(observation, None, span, value=value_text, text="HLA-B27"), span, value_text)


def most_recent(results: Iterable[LabResult]) -> LabResult:
    """The most recent readable result; if none is readable, the reason of the most recent attempt."""
    ordered = sorted(results, key=lambda r: r.date.latest if r.date else date.min, reverse=True)
    for result in ordered:
        if result.state != NOT_DOCUMENTED:
            newer = [
                r
                for r in ordered
                if r.state == NOT_DOCUMENTED and r.date and result.date and r.date.latest > result.date.latest
            ]
            if newer:
                return LabResult(
                    result.state,
                    result.evidence,
                    result.date,
                    result.value_text,
                    result.mg_per_l,
                    (result.note or "") + "; a more recent result could not be read",
                )
            return result
    if ordered:
        return LabResult(NOT_DOCUMENTED, None, ordered[0].date, None, None, ordered[0].note)
    return LabResult(NOT_DOCUMENTED, None, None, None, None, None)


def has_recent_readable(results: Iterable[LabResult], today: date, months: int) -> bool:
    return any(r.state != NOT_DOCUMENTED and r.date and within_last_months(r.date, today, months) for r in results)
