"""Clinical rules rev 2: HLA-B27 never expires (text values, status rules, no re-ordering), hs-CRP judged
against 5 mg/L only, and QuestionnaireResponses to any version of our Questionnaire."""

from __future__ import annotations

import pytest

from cds_service.clinical import labs

from .builders import QUESTIONNAIRE, crp, days_ago, hla_b27, lbp, observation, questionnaire_response, record
from .conftest import topics
from .test_axspa import axspa_record


# -- HLA-B27 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POS", labs.POSITIVE),
        ("pos", labs.POSITIVE),
        ("+", labs.POSITIVE),
        ("present", labs.POSITIVE),
        ("Present", labs.POSITIVE),
        ("NEG", labs.NEGATIVE),
        ("neg.", labs.NEGATIVE),
        ("-", labs.NEGATIVE),
        ("ABSENT", labs.NEGATIVE),
        ("Positive", labs.POSITIVE),
        ("not detected", labs.NEGATIVE),
        ("+/-", labs.NOT_DOCUMENTED),
        ("indeterminate", labs.NOT_DOCUMENTED),
        ("positive control failed", labs.NOT_DOCUMENTED),
    ],
)
def test_hla_b27_text_values(facts_of, text, expected) -> None:
    assert facts_of(record(hla_b27(value_string=text))).hla_b27.state == expected


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        ("final", True),
        ("amended", True),
        ("corrected", True),
        ("preliminary", False),
        ("registered", False),
        ("cancelled", False),
        ("entered-in-error", False),
    ],
)
def test_hla_b27_status_rules(facts_of, status, counts) -> None:
    facts = facts_of(record(hla_b27(value_string="positive", status=status)))
    assert (facts.hla_b27.state == labs.POSITIVE) is counts
    assert facts.hla_b27_recent is counts


def test_preliminary_result_does_not_hide_an_older_final_one(facts_of) -> None:
    old = hla_b27(days=2000, value_string="negative")
    prelim = hla_b27(days=2, value_string="positive", status="preliminary")
    assert facts_of(record(old, prelim)).hla_b27.state == labs.NEGATIVE


def test_hla_b27_positive_five_years_ago_counts_and_is_not_reordered(run) -> None:
    rec = axspa_record(3, hla_b27(days=5 * 365, value_string="POS"))
    [card] = [d for d in run("patient-view", rec) if d.topic.startswith("axspa")]
    assert card.topic == "axspa-referral" and card.params["referral_reason"] == "3-and-hla-b27-positive"
    assert card.params["labs_to_order"] == ["crp"]


def test_hla_b27_negative_ten_years_ago_means_no_card_for_three_criteria(run) -> None:
    rec = axspa_record(3, hla_b27(days=3650, value_string="-"))
    assert not [t for t in topics(run("patient-view", rec)) if t.startswith("axspa")]


def test_referral_add_labs_leaves_out_an_old_hla_b27(run) -> None:
    rec = axspa_record(4, hla_b27(days=4000, value_string="negative"), crp(2.0, days=30))
    [card] = [d for d in run("patient-view", rec) if d.topic.startswith("axspa")]
    assert card.params["labs_to_order"] == []
    assert [s.kind for s in card.suggestions] == ["refer-rheumatology"]


def test_no_hla_b27_ever_still_asks_for_it(run) -> None:
    [card] = [d for d in run("patient-view", axspa_record(3)) if d.topic.startswith("axspa")]
    assert card.topic == "axspa-hla-b27"
    rec = axspa_record(3, hla_b27(value_string="positive", status="preliminary"))
    [card] = [d for d in run("patient-view", rec) if d.topic.startswith("axspa")]
    assert card.topic == "axspa-hla-b27"  # a preliminary result is not a result


# -- hs-CRP ----------------------------------------------------------------------------------------
def hs_crp(value, unit="mg/L", **kw):
    return observation("30522-7", effective=days_ago(10), quantity=(value, unit), **kw)


@pytest.mark.parametrize(
    ("value", "unit", "kw", "expected"),
    [
        (6.0, "mg/L", {"ref_high": (10.0, "mg/L")}, labs.ELEVATED),  # above 5, inside a CV-risk band
        (4.0, "mg/L", {"ref_high": (3.0, "mg/L")}, labs.NOT_ELEVATED),  # above the band, below 5
        (3.5, "mg/L", {"interpretation": "H"}, labs.NOT_ELEVATED),  # "high" cardiovascular risk
        (5.0, "mg/L", {}, labs.NOT_ELEVATED),  # boundary: elevated means > 5
        (5.1, "mg/L", {}, labs.ELEVATED),
        (0.6, "mg/dL", {}, labs.ELEVATED),
        (12.0, "nmol/L", {"ref_high": (100.0, "nmol/L")}, labs.NOT_DOCUMENTED),  # not convertible
    ],
)
def test_hs_crp_is_judged_against_5_mg_per_l_only(facts_of, value, unit, kw, expected) -> None:
    assert facts_of(record(hs_crp(value, unit, **kw))).crp.state == expected


def test_standard_crp_still_uses_its_reference_range(facts_of) -> None:
    assert facts_of(record(crp(6.0, ref_high=(10.0, "mg/L")))).crp.state == labs.NOT_ELEVATED


# -- versioned Questionnaire canonicals ------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["|1.0.0", "|2.1", ""])
def test_saddle_anaesthesia_from_any_questionnaire_version(run, suffix) -> None:
    qr = questionnaire_response({"saddle-anaesthesia": True}, questionnaire=QUESTIONNAIRE + suffix)
    assert topics(run("patient-view", record(lbp(5), qr))) == ["cauda-equina"]


@pytest.mark.parametrize(
    "canonical",
    [
        QUESTIONNAIRE + "-v2|1.0.0",
        "http://example.org/fhir/other/Questionnaire/back-pain-assessment|1.0.0",
        "|1.0.0",
    ],
)
def test_other_questionnaires_are_not_read(run, canonical) -> None:
    qr = questionnaire_response({"saddle-anaesthesia": True}, questionnaire=canonical)
    assert "cauda-equina" not in topics(run("patient-view", record(lbp(5), qr)))


def test_hla_b27_local_coding_display(facts_of) -> None:
    obs = hla_b27()
    obs["valueCodeableConcept"] = {"coding": [{"system": "urn:oid:1.2.3", "code": "P1", "display": "Positive"}]}
    assert facts_of(record(obs)).hla_b27.state == labs.POSITIVE
    obs["valueCodeableConcept"] = {"coding": [{"system": "urn:oid:1.2.3", "code": "X", "display": "Equivocal"}]}
    assert facts_of(record(obs)).hla_b27.state == labs.NOT_DOCUMENTED
