"""Small, total accessors for raw FHIR JSON (dicts) of resources that already passed validation.

Rules read the original JSON rather than the pydantic objects so that partial dates keep their
precision ("2024-05" stays a month, see dates.py). Every accessor returns None instead of raising.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from cds_service.clinical.codes import SNOMED, concept_text, describe_coding, iter_codings, normalize_system
from cds_service.clinical.dates import DateSpan, parse_fhir_date
from cds_service.clinical.model import Evidence

EXCLUDED_CONDITION_VERIFICATION = frozenset({"entered-in-error", "refuted"})
ACTIVE_CLINICAL_STATUS = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_OBSERVATION_STATUS = frozenset({"entered-in-error", "cancelled"})
ABSENT_VALUE_CODES = {(SNOMED, "2667000"), (SNOMED, "260385009"), (SNOMED, "373067005")}  # absent/negative/no


def reference_of(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id') or '?'}"


def status_code(concept: Any) -> str | None:
    """The code of a status CodeableConcept (clinicalStatus, verificationStatus)."""
    for coding in iter_codings(concept):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return None


def condition_excluded(condition: dict[str, Any]) -> bool:
    return status_code(condition.get("verificationStatus")) in EXCLUDED_CONDITION_VERIFICATION


def condition_active(condition: dict[str, Any]) -> bool:
    """Active = clinicalStatus active/recurrence/relapse, or absent (spec section 1)."""
    status = status_code(condition.get("clinicalStatus"))
    return status is None or status in ACTIVE_CLINICAL_STATUS


def observation_excluded(observation: dict[str, Any]) -> bool:
    return observation.get("status") in EXCLUDED_OBSERVATION_STATUS


def first_span(resource: dict[str, Any], *paths: str) -> tuple[DateSpan | None, str | None]:
    """The first parseable date among dotted paths ("onsetPeriod.start"), with the path that gave it."""
    for path in paths:
        value: Any = resource
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        span = parse_fhir_date(value)
        if span is not None:
            return span, path
    return None, None


def observation_span(observation: dict[str, Any]) -> DateSpan | None:
    return first_span(observation, "effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued")[0]


def condition_clinical_span(condition: dict[str, Any]) -> DateSpan | None:
    """When the condition happened: onset (dateTime/period), else recordedDate."""
    return first_span(condition, "onsetDateTime", "onsetPeriod.start", "recordedDate")[0]


def span_text(span: DateSpan | None) -> str | None:
    return span.text if span else None


def evidence_for(
    resource: dict[str, Any],
    coding: dict[str, Any] | None,
    span: DateSpan | None,
    value: str | None = None,
    text: str | None = None,
) -> Evidence:
    """Evidence pointing at a resource; text defaults to the matched coding ('Fever (SNOMED 386661006)')."""
    if text is None:
        text = describe_coding(coding) if coding else (concept_text(resource.get("code")) or reference_of(resource))
    return Evidence(reference=reference_of(resource), text=text, date=span_text(span), value=value)


def quantity(value: Any) -> tuple[float, str | None] | None:
    """(number, unit) of a Quantity dict; the UCUM code is preferred over the free-text unit."""
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None
    unit = value.get("code") if isinstance(value.get("code"), str) else value.get("unit")
    return float(number), unit if isinstance(unit, str) else None


def interpretation_codes(observation: dict[str, Any]) -> set[str]:
    """Interpretation codes (HL7 v3 / v2 0078 share H, HH, L, N, POS, NEG ...), upper case."""
    codes: set[str] = set()
    interps = observation.get("interpretation")
    if isinstance(interps, list):
        for concept in interps:
            for coding in iter_codings(concept):
                system = normalize_system(coding.get("system"))
                code = coding.get("code")
                if isinstance(code, str) and (
                    not system or "ObservationInterpretation" in system or system.endswith("v2-0078")
                ):
                    codes.add(code.upper())
    return codes


def age_in_years(value: Any) -> float | None:
    """An Age quantity in years (UCUM a / mo / wk / d), else None."""
    q = quantity(value)
    if q is None:
        return None
    number, unit = q
    factors = {
        "a": 1.0,
        "yr": 1.0,
        "year": 1.0,
        "years": 1.0,
        "mo": 1 / 12,
        "wk": 7 / 365.25,
        "d": 1 / 365.25,
    }
    factor = factors.get((unit or "a").lower())
    return number * factor if factor is not None else None


def span_from_date(day: date, text: str | None = None) -> DateSpan:
    return DateSpan(day, day, text or day.isoformat())


def observation_says_absent(obs: dict[str, Any]) -> bool:
    """An Observation whose value says absent / negative / no (a recorded "no", not a missing datum)."""
    if obs.get("valueBoolean") is False:
        return True
    for coding in iter_codings(obs.get("valueCodeableConcept")):
        if (normalize_system(coding.get("system")), str(coding.get("code", ""))) in ABSENT_VALUE_CODES:
            return True
    return "NEG" in interpretation_codes(obs)


def with_display(coding: dict[str, Any] | None, valueset: Any) -> dict[str, Any] | None:
    """The coding, with the value set's display filled in when the EHR sent none (for evidence text)."""
    if coding is None or coding.get("display"):
        return coding
    display = valueset.display(coding.get("system"), coding.get("code"))
    return {**coding, "display": display} if display else coding
