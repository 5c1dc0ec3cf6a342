"""The product's FHIR Questionnaire and CodeSystems (spec sections 5 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.questionnaire import Questionnaire

from cds_service.clinical.knowledge import FHIR_DIR
from cds_service.clinical.questionnaire import BOOLEAN_ITEMS

SPEC_LINK_IDS = [
    "pain-onset-date",
    "insidious-onset",
    "morning-stiffness-over-30-min",
    "improves-with-movement",
    "no-improvement-with-rest",
    "night-waking-second-half",
    "buttock-pain",
    "alternating-buttock-pain",
    "nsaid-response-within-48h",
    "leg-pain-below-knee",
    "saddle-anaesthesia",
    "bladder-or-bowel-dysfunction",
    "progressive-leg-weakness",
    "fever",
    "unexplained-weight-loss",
    "history-of-cancer",
    "iv-drug-use",
    "immunosuppression",
    "significant-trauma",
    "long-term-steroids",
]
# clinical-rules.md section 6: the codes the product contract names (a site or a later revision may add more)
SPEC_TOPICS = [
    "cauda-equina",
    "red-flag",
    "imaging-appropriate",
    "imaging-not-indicated",
    "repeat-imaging",
    "axspa-sij-imaging",
    "axspa-referral",
    "axspa-hla-b27",
    "self-management",
    "chronic-management",
]


def load(name: str) -> dict:
    return json.loads((FHIR_DIR / name).read_text())


def leaves(items: list[dict]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        if item["type"] == "group":
            found.update(leaves(item["item"]))
        else:
            found[item["linkId"]] = item["type"]
    return found


def test_questionnaire_is_valid_and_has_exactly_the_spec_items() -> None:
    raw = load("Questionnaire-back-pain-assessment.json")
    Questionnaire.model_validate(raw)
    assert raw["url"] == "http://example.org/fhir/lbp-cds/Questionnaire/back-pain-assessment"
    items = leaves(raw["item"])
    assert sorted(items) == sorted(SPEC_LINK_IDS)
    assert items["pain-onset-date"] == "date"
    assert all(items[link] == "boolean" for link in SPEC_LINK_IDS if link != "pain-onset-date")
    assert sorted(BOOLEAN_ITEMS) == sorted(link for link in SPEC_LINK_IDS if link != "pain-onset-date")


def test_card_topic_codesystem() -> None:
    raw = load("CodeSystem-card-topic.json")
    CodeSystem.model_validate(raw)
    assert raw["url"] == "http://example.org/fhir/lbp-cds/CodeSystem/card-topic"
    codes = [c["code"] for c in raw["concept"]]
    assert len(codes) == len(set(codes))
    assert set(SPEC_TOPICS) <= set(codes), set(SPEC_TOPICS) - set(codes)
    assert all(c.get("display") for c in raw["concept"])


def test_override_reason_codesystem() -> None:
    raw = load("CodeSystem-override-reason.json")
    CodeSystem.model_validate(raw)
    assert raw["url"] == "http://example.org/fhir/lbp-cds/CodeSystem/override-reason"
    codes = {c["code"] for c in raw["concept"]}
    assert {
        "red-flag-not-documented",
        "failed-conservative-care",
        "surgical-planning",
        "patient-specific",
        "already-referred",
        "patient-declined",
        "not-applicable",
    } <= codes
    assert raw["count"] == len(raw["concept"])


def test_fhir_dir_holds_only_these_files() -> None:
    assert sorted(p.name for p in Path(FHIR_DIR).glob("*.json")) == [
        "CodeSystem-card-topic.json",
        "CodeSystem-override-reason.json",
        "Questionnaire-back-pain-assessment.json",
    ]
