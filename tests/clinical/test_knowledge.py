"""Value sets, thresholds, site configuration and code matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fhir.resources.R4B.valueset import ValueSet

from cds_service.clinical.knowledge import VALUESET_DIR, Knowledge, KnowledgeError, Thresholds

from .builders import CPT, ICD, LOINC, SNOMED

SPEC_DEFAULTS = {
    "fever_temperature_celsius": 38.0,
    "fever_window_days": 14,
    "trauma_window_days": 90,
    "steroid_min_months": 3,
    "fracture_risk_age_years": 70,
    "conservative_care_min_weeks": 6,
    "prior_imaging_window_months": 12,
    "crp_upper_limit_mg_per_l": 5.0,
    "rheumatology_referral_window_months": 12,
    "crp_lookback_months": 12,
    "hla_b27_lookback_months": 12,
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("path", sorted(VALUESET_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_valueset_is_valid_fhir_and_documents_its_source(path: Path) -> None:
    raw = json.loads(path.read_text())
    ValueSet.model_validate(raw)
    assert raw["id"] == path.stem
    assert raw["url"].endswith(f"/ValueSet/{raw['id']}")
    assert len(raw["description"]) > 40
    for include in raw["compose"]["include"]:
        for concept in include.get("concept", []):
            statuses = [e["valueCode"] for e in concept["extension"] if e["url"].endswith("verification-status")]
            assert statuses and statuses[0] in ("V", "C", "U"), concept


def test_defaults_match_the_specification(knowledge: Knowledge) -> None:
    for name, value in SPEC_DEFAULTS.items():
        assert getattr(knowledge.thresholds, name) == value, name


def test_every_threshold_in_yaml_has_a_comment() -> None:
    text = (VALUESET_DIR.parent / "thresholds.yaml").read_text().splitlines()
    for index, line in enumerate(text):
        if line and not line.startswith("#") and ":" in line:
            assert text[index - 1].startswith("#"), f"no comment above {line!r}"


@pytest.mark.parametrize(
    ("vs_id", "system", "code"),
    [
        ("low-back-pain", SNOMED, "279039007"),
        ("low-back-pain", "urn:oid:2.16.840.1.113883.6.96", "279039007"),
        ("low-back-pain", "https://snomed.info/sct/", "279039007"),
        ("low-back-pain", ICD, "M54.50"),
        ("low-back-pain", ICD, "M5450"),
        ("low-back-pain", "urn:oid:2.16.840.1.113883.6.90", "m54.5"),
        ("axspa-diagnosis", ICD, "M45.A5"),
        ("axspa-diagnosis", ICD, "M459"),
        ("malignancy", ICD, "C50.911"),
        ("malignancy", ICD, "C96.Z"),
        ("malignancy", ICD, "C7A.010"),
        ("malignancy", ICD, "Z85.3"),
        ("significant-trauma", ICD, "S32.001A"),
        ("psoriasis", ICD, "L40.0"),
        ("inflammatory-bowel-disease", ICD, "K50.90"),
        ("lumbar-imaging", CPT, "72148"),
        ("lumbar-imaging", "http://ama-assn.org/go/cpt", "72100"),
        ("lumbar-imaging", LOINC, "24968-0"),
        ("crp", "urn:oid:2.16.840.1.113883.6.1", "1988-5"),
        ("nsaid-analgesic", "http://www.whocc.no/atc", "M01AE01"),
        ("immunosuppressant", "http://www.whocc.no/atc", "L04AB02"),
    ],
)
def test_codes_match_after_normalisation(knowledge: Knowledge, vs_id: str, system: str, code: str) -> None:
    assert knowledge.valueset(vs_id).contains(system, code)


@pytest.mark.parametrize(
    ("vs_id", "system", "code"),
    [
        ("malignancy", ICD, "D05.1"),  # carcinoma in situ: not C00-C96
        ("malignancy", ICD, "C97"),
        ("low-back-pain", ICD, "M54.2"),  # cervicalgia
        ("low-back-pain", LOINC, "279039007"),  # right code, wrong system
        ("significant-trauma", ICD, "S32.1"),  # sacrum, not S32.0x
        ("lumbar-imaging", CPT, "72040"),  # cervical spine radiograph
        ("axspa-diagnosis", ICD, "M46.1"),
    ],
)
def test_codes_outside_the_value_set_do_not_match(knowledge: Knowledge, vs_id: str, system: str, code: str) -> None:
    assert not knowledge.valueset(vs_id).contains(system, code)


def test_search_tokens_list_system_and_code(knowledge: Knowledge) -> None:
    tokens = knowledge.search_tokens("crp").split(",")
    assert "http://loinc.org|1988-5" in tokens
    assert "http://loinc.org|4821-5" in knowledge.search_tokens("hla-b27")
    assert "http://loinc.org|8310-5" in knowledge.search_tokens("body-temperature").split(",")
    findings = knowledge.search_tokens("symptom-findings")
    for code in ("279043006", "40144003", "386661006", "448765001", "449813001", "267064002", "6077001", "26544005"):
        assert f"{SNOMED}|{code}" in findings


def test_site_config_adds_local_codes_everywhere_including_search_tokens(tmp_path: Path) -> None:
    epic = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580"
    path = write(
        tmp_path,
        {
            "valuesets": {
                "crp": [{"system": epic, "code": "CRP-LOCAL", "display": "CRP (local)"}],
                "fever": [{"system": epic, "code": 12345}],
                "low-back-pain": [{"system": ICD, "prefix": "M54.8"}],
            },
            "thresholds": {"fever_temperature_celsius": 38.5, "trauma_window_days": 30},
        },
    )
    k = Knowledge.load(path)
    assert f"{epic}|CRP-LOCAL" in k.search_tokens("crp")
    assert f"{epic}|12345" in k.search_tokens("symptom-findings")  # fever is part of symptom-findings
    assert k.valueset("low-back-pain").contains(ICD, "M54.89")
    assert k.thresholds.fever_temperature_celsius == 38.5
    assert k.thresholds.trauma_window_days == 30
    assert k.thresholds.steroid_min_months == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"valuesets": {"no-such-set": []}}, "unknown value set id"),
        ({"valuesets": {"crp": [{"code": "1"}]}}, "'system' is required"),
        ({"valuesets": {"crp": [{"system": "x", "code": "1", "prefix": "2"}]}}, "exactly one of"),
        ({"valuesets": {"crp": [{"system": "x", "code": "1", "colour": "red"}]}}, "unknown key"),
        ({"valuesets": {"crp": {"system": "x"}}}, "expected a list"),
        ({"thresholds": {"fever_temp": 38}}, "unknown threshold"),
        ({"thresholds": {"fever_window_days": "14"}}, "expected a number"),
        ({"thresholds": {"fever_window_days": 14.5}}, "whole number"),
        ({"thresholds": {"trauma_window_days": 0}}, "greater than 0"),
        ({"thresholds": {"trauma_window_days": True}}, "expected a number"),
        ({"colour": 1}, "unknown top-level key"),
        ("- a list", "expected a mapping"),
    ],
)
def test_invalid_site_config_gives_a_clear_error(tmp_path: Path, config: object, message: str) -> None:
    with pytest.raises(KnowledgeError, match=message) as err:
        Knowledge.load(write(tmp_path, config))
    assert "site.yaml" in str(err.value)


def test_unreadable_site_config(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="cannot read"):
        Knowledge.load(tmp_path / "missing.yaml")
    with pytest.raises(KnowledgeError, match="cannot read"):
        Knowledge.load(write(tmp_path, "a: [unclosed"))


def test_empty_site_config_keeps_defaults(tmp_path: Path) -> None:
    assert Knowledge.load(write(tmp_path, "")).thresholds == Knowledge.load().thresholds


def test_isa_filter_refused_for_non_hierarchical_systems(tmp_path: Path) -> None:
    bad = {
        "resourceType": "ValueSet",
        "id": "bad",
        "status": "active",
        "compose": {
            "include": [{"system": SNOMED, "filter": [{"property": "concept", "op": "is-a", "value": "404684003"}]}]
        },
    }
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(KnowledgeError, match="terminology server"):
        Knowledge.load(valueset_dir=tmp_path)


def test_thresholds_file_must_be_complete() -> None:
    with pytest.raises(KnowledgeError, match="missing threshold"):
        Thresholds.from_mapping({"fever_window_days": 14}, "test")


def test_unknown_valueset_id_raises_keyerror(knowledge: Knowledge) -> None:
    with pytest.raises(KeyError):
        knowledge.valueset("nope")
