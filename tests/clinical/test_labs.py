"""CRP and HLA-B27 interpretation."""

from __future__ import annotations

import pytest

from cds_service.clinical import labs

from .builders import SNOMED, crp, days_ago, hla_b27, observation, record


def crp_state(facts_of, *obs) -> str:
    return facts_of(record(*obs)).crp.state


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (5.1, "mg/L", labs.ELEVATED),
        (5.0, "mg/L", labs.NOT_ELEVATED),  # "> 5 mg/L": exactly 5 is not elevated
        (4.9, "mg/L", labs.NOT_ELEVATED),
        (0.6, "mg/dL", labs.ELEVATED),  # 6 mg/L
        (0.5, "mg/dL", labs.NOT_ELEVATED),  # 5 mg/L exactly
        (6.0, "ug/mL", labs.ELEVATED),
        (40.0, "nmol/L", labs.NOT_DOCUMENTED),  # unknown unit, no range
        (12.0, "furlongs", labs.NOT_DOCUMENTED),
    ],
)
def test_crp_against_configured_limit_with_units(facts_of, value, unit, expected) -> None:
    assert crp_state(facts_of, crp(value, unit)) == expected


def test_crp_reference_range_wins_over_the_limit(facts_of) -> None:
    assert crp_state(facts_of, crp(8.0, ref_high=(10.0, "mg/L"))) == labs.NOT_ELEVATED
    assert crp_state(facts_of, crp(10.0, ref_high=(10.0, "mg/L"))) == labs.NOT_ELEVATED  # exactly high
    assert crp_state(facts_of, crp(10.1, ref_high=(10.0, "mg/L"))) == labs.ELEVATED
    assert crp_state(facts_of, crp(3.0, ref_high=(3.0, None))) == labs.NOT_ELEVATED  # high without unit
    assert crp_state(facts_of, crp(0.4, "mg/dL", ref_high=(3.0, "mg/L"))) == labs.ELEVATED  # converted
    assert crp_state(facts_of, crp(50.0, "nmol/L", ref_high=(30.0, "nmol/L"))) == labs.ELEVATED


def test_crp_interpretation_when_no_range(facts_of) -> None:
    assert crp_state(facts_of, crp(3.0, "nmol/L", interpretation="H")) == labs.ELEVATED
    assert crp_state(facts_of, crp(None, interpretation="HH")) == labs.ELEVATED
    assert crp_state(facts_of, crp(20.0, interpretation="N")) == labs.NOT_ELEVATED  # interpretation before limit


def test_crp_without_value_is_not_documented(facts_of) -> None:
    result = facts_of(record(crp(None))).crp
    assert result.state == labs.NOT_DOCUMENTED and result.note


def test_most_recent_readable_crp_wins_and_unreadable_newer_is_noted(facts_of) -> None:
    assert crp_state(facts_of, crp(20.0, days=60), crp(2.0, days=5)) == labs.NOT_ELEVATED
    result = facts_of(record(crp(20.0, days=60), crp(2.0, "nmol/L", days=5))).crp
    assert result.state == labs.ELEVATED and "more recent" in result.note


def test_cancelled_crp_is_ignored(facts_of) -> None:
    assert crp_state(facts_of, crp(20.0, status="cancelled")) == labs.NOT_DOCUMENTED
    assert crp_state(facts_of, crp(20.0, status="entered-in-error")) == labs.NOT_DOCUMENTED


def test_crp_lookback(facts_of) -> None:
    assert facts_of(record(crp(2.0, days=300))).crp_recent
    assert not facts_of(record(crp(2.0, days=400))).crp_recent
    assert not facts_of(record(crp(2.0, "nmol/L", days=3))).crp_recent  # unreadable does not count


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"value_cc": (SNOMED, "10828004")}, labs.POSITIVE),
        ({"value_cc": (SNOMED, "260385009")}, labs.NEGATIVE),
        ({"value_string": "Positive"}, labs.POSITIVE),
        ({"value_string": "DETECTED"}, labs.POSITIVE),
        ({"value_string": "negative"}, labs.NEGATIVE),
        ({"value_string": "Not  detected"}, labs.NEGATIVE),
        ({"interpretation": "POS"}, labs.POSITIVE),
        ({"interpretation": "NEG"}, labs.NEGATIVE),
        ({"value_cc": ("http://loinc.org", "LA6576-8")}, labs.POSITIVE),
        ({"value_cc": ("http://loinc.org", "LA6577-6")}, labs.NEGATIVE),
        ({"value_string": "see report"}, labs.NOT_DOCUMENTED),
        ({}, labs.NOT_DOCUMENTED),
    ],
)
def test_hla_b27_result_forms(facts_of, kwargs, expected) -> None:
    assert facts_of(record(hla_b27(**kwargs))).hla_b27.state == expected


def test_hla_b27_alternative_loinc_and_most_recent(facts_of) -> None:
    flow = observation("26028-1", effective=days_ago(3), value_string="positive")
    old = hla_b27(days=900, value_string="negative")
    facts = facts_of(record(old, flow))
    assert facts.hla_b27.state == labs.POSITIVE and facts.hla_b27_recent
    assert facts_of(record(old)).hla_b27_recent  # rev 2: HLA-B27 never expires


def test_hla_b27_from_an_uncoded_value_concept_text(facts_of) -> None:
    result = hla_b27()
    result["valueCodeableConcept"] = {"text": "Positive"}
    assert facts_of(record(result)).hla_b27.state == labs.POSITIVE
    result["valueCodeableConcept"] = {"text": "inconclusive"}
    assert facts_of(record(result)).hla_b27.state == labs.NOT_DOCUMENTED
