"""The red flags whose finding is computed rather than looked up (see red_flag_catalogue.py):
fever from body temperatures over a complete 14-day window, immunosuppression from drugs, a long-term
systemic corticosteroid course, and age (a partial birthDate gives a range: spec section 1, rev 2)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from cds_service.clinical.dates import add_months, local_day, within_last_days
from cds_service.clinical.facts.model import NOT_DOCUMENTED, Finding, combine
from cds_service.clinical.fhir_read import evidence_for, observation_span, quantity, reference_of
from cds_service.clinical.medications import merged_spans
from cds_service.clinical.model import Evidence, State

if TYPE_CHECKING:
    from cds_service.clinical.facts.builder import Builder

# Plausible human body temperatures, used only to read a value that carries no unit.
_CELSIUS_RANGE = (25.0, 46.0)
_FAHRENHEIT_RANGE = (77.0, 115.0)


_UNIT_NOISE = ("°", "[", "]", "degrees", "degree", "deg", " ", ".")
# SNOMED CT unit concepts some EHRs put in Quantity.code: 258710007 degrees Celsius, 258712004 degrees Fahrenheit
_SNOMED_UNITS = {"258710007": "c", "258712004": "f"}


def _unit_key(unit: str | None) -> str:
    u = (unit or "").strip().lower()
    if u in _SNOMED_UNITS:
        return _SNOMED_UNITS[u]
    for noise in _UNIT_NOISE:
        u = u.replace(noise, "")
    return u


def to_celsius(value: float, unit: str | None) -> tuple[float | None, str | None]:
    """(degrees Celsius, note) from Cel/°C/degC/"degrees C" or [degF]/°F/degF; a missing unit is read from a
    plausible range (25-46 °C, 77-115 °F)."""
    u = _unit_key(unit)
    if u in ("cel", "c", "celsius", "centigrade"):
        return round(value, 2), None
    if u in ("f", "fahrenheit"):
        return round((value - 32) * 5 / 9, 2), None
    if not u:
        if _CELSIUS_RANGE[0] <= value <= _CELSIUS_RANGE[1]:
            return round(value, 2), "no unit: read as °C from its value"
        if _FAHRENHEIT_RANGE[0] <= value <= _FAHRENHEIT_RANGE[1]:
            return round((value - 32) * 5 / 9, 2), "no unit: read as °F from its value"
    return None, None


def fever(b: Builder) -> Finding:
    """Fever finding, fever answer, or a body temperature >= threshold in the last N days (any temperature
    code, °C or °F). When the readings are known complete only from T (record.temperatures_complete_since)
    and T lies after the window start, "no fever" cannot be said: not documented, naming the days."""
    t = b.t
    coded = b.coded("fever", window_days=t.fever_window_days)
    vs = b.k.valueset("body-temperature")
    met: list[Evidence] = []
    normal: list[Evidence] = []
    notes: list[str] = []
    for obs in b.observations:
        if vs.match(obs.get("code")) is None:
            continue
        span = observation_span(obs)
        if span is None or not within_last_days(span, b.today, t.fever_window_days):
            continue
        q = quantity(obs.get("valueQuantity"))
        if q is None:
            notes.append(f"{reference_of(obs)}: temperature without a value")
            continue
        celsius, unit_note = to_celsius(*q)
        free_unit = (obs.get("valueQuantity") or {}).get("unit")
        if celsius is None and isinstance(free_unit, str) and free_unit != q[1]:
            q = (q[0], free_unit)  # an unknown Quantity.code: the human-readable unit may still say °C / °F
            celsius, unit_note = to_celsius(*q)
        if celsius is None:
            notes.append(f"{reference_of(obs)}: unknown temperature unit {q[1]!r}")
            continue
        value = f"{q[0]:g} {q[1]}" if q[1] else f"{q[0]:g} ({unit_note})"
        ev = evidence_for(obs, None, span, value=value, text="Body temperature")
        (met if celsius >= t.fever_temperature_celsius else normal).append(ev)
    temp = (
        Finding(State.MET, tuple(met))
        if met
        else (Finding(State.NOT_MET, tuple(normal)) if normal else Finding(State.NOT_DOCUMENTED))
    )
    result = combine(
        coded,
        temp,
        b.answer("fever", "fever", window_days=t.fever_window_days),
        Finding(State.NOT_DOCUMENTED, (), "; ".join(notes) or None),
    )
    if result.met:
        return result
    since = b.record.temperatures_complete_since
    window_start = b.today - timedelta(days=t.fever_window_days)
    if since is not None:
        since_day = local_day(since)
        if since_day > window_start:
            gap = (
                f"body temperatures from {window_start.isoformat()} to {since_day.isoformat()} could not be "
                f"obtained: fever in those days is not documented"
            )
            note = "; ".join(n for n in (gap, result.note) if n)
            return Finding(State.NOT_DOCUMENTED, result.evidence, note)
    return result


def immunosuppression(b: Builder) -> Finding:
    drugs = [
        u.evidence("current immunosuppressant") for u in b.meds if u.med_class == "immunosuppressant" and u.current
    ]
    return combine(
        b.coded("immunosuppression"),
        Finding(State.MET, tuple(drugs)) if drugs else NOT_DOCUMENTED,
        b.answer("immunosuppression", "immunosuppression"),
    )


def long_term_steroids(b: Builder) -> Finding:
    months = b.t.steroid_min_months
    steroid_uses = [u for u in b.meds if u.med_class == "systemic-corticosteroid"]
    course = NOT_DOCUMENTED
    if steroid_uses:
        long = [(s, e, m) for s, e, m in merged_spans(steroid_uses) if add_months(s, months) <= e]
        if long:
            s, e, members = long[0]
            course = Finding(State.MET, tuple(u.evidence(f"{s.isoformat()} to {e.isoformat()}") for u in members))
        elif any(u.start and u.end for u in steroid_uses):
            course = Finding(
                State.NOT_MET,
                tuple(u.evidence() for u in steroid_uses),
                f"systemic corticosteroids documented for less than {months} months",
            )
        else:
            course = Finding(
                State.NOT_DOCUMENTED,
                tuple(u.evidence() for u in steroid_uses),
                "systemic corticosteroid duration cannot be determined",
            )
    return combine(
        b.coded("long-term-steroid-use"),
        course,
        b.answer("long-term-steroids", "long-term steroid use"),
    )


def age_at_least(b: Builder, threshold: int) -> Finding:
    """Age >= threshold from the age range: decided only when the whole range is on one side."""
    if b.age_range is None:
        return Finding(State.NOT_DOCUMENTED, (), "birth date not documented")
    low, high = b.age_range
    text = f"{low} years" if low == high else f"age {low}–{high} (birth date {b.birth_text} is partial)"
    patient = b.record.patient or {}
    ev = Evidence(reference_of(patient), "Age", b.birth_text, text)
    if low >= threshold:
        return Finding(State.MET, (ev,))
    if high < threshold:
        return Finding(State.NOT_MET, (ev,))
    return Finding(State.NOT_DOCUMENTED, (ev,), f"age {low}–{high}: the birth date is partial")


SPECIAL = {
    "fever": fever,
    "immunosuppression": immunosuppression,
    "long-term-steroids": long_term_steroids,
    "age": lambda b: age_at_least(b, b.t.fracture_risk_age_years),
}
