"""Rendering Decisions into CDS Hooks 2.0 cards: protocol rules, wording limits, robustness."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cds_service import cards as cards_module
from cds_service.cards import (
    OVERRIDE_REASON_SYSTEM,
    TOPIC_SYSTEM,
    TOPICS,
    CardCatalog,
    CardRenderError,
)
from cds_service.clinical.model import Decision, PatientRecord, SuggestionSpec
from cds_service.protocol import response_errors

from .conftest import ACTION_DELETE, decision


def card_problems(card: dict[str, Any]) -> list[str]:
    """CDS Hooks 2.0 card rules beyond the JSON schema (see shared reference checklist)."""
    problems: list[str] = []

    def walk(value: Any, path: str) -> None:
        if value is None or value == "" or value == [] or value == {}:
            problems.append(f"{path}: empty value")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    walk(card, "$")
    uuid.UUID(card["uuid"])
    if len(card["summary"]) >= 140:
        problems.append(f"summary has {len(card['summary'])} characters")
    if "\n" in card["summary"]:
        problems.append("summary spans lines")
    if card["indicator"] not in ("info", "warning", "critical"):
        problems.append("indicator")
    topic = card["source"]["topic"]
    if topic["system"] != TOPIC_SYSTEM or topic["code"] not in TOPICS or not topic.get("display"):
        problems.append("source.topic")
    suggestions = card.get("suggestions", [])
    if suggestions and card.get("selectionBehavior") not in ("at-most-one", "any"):
        problems.append("selectionBehavior missing with suggestions")
    if not suggestions and "selectionBehavior" in card:
        problems.append("selectionBehavior without suggestions")
    if card.get("selectionBehavior") == "at-most-one" and sum(bool(s["isRecommended"]) for s in suggestions) > 1:
        problems.append("more than one recommended suggestion with at-most-one")
    for s in suggestions:
        uuid.UUID(s["uuid"])
        if not s.get("label") or not s.get("actions"):
            problems.append("suggestion without label or actions")
        for action in s["actions"]:
            if action["type"] not in ("create", "update", "delete") or not action.get("description"):
                problems.append("action type/description")
            if action["type"] == "delete" and "resourceId" not in action:
                problems.append("delete without resourceId")
            if action["type"] in ("create", "update") and "resource" not in action:
                problems.append("create/update without resource")
    for reason in card.get("overrideReasons", []):
        if not (reason.get("system") and reason.get("code") and reason.get("display")):
            problems.append("overrideReason Coding incomplete")
    for link in card.get("links", []):
        if link.get("type") != "absolute" or not link["url"].startswith("https://"):
            problems.append(f"link {link}")
    return problems


@pytest.mark.parametrize("topic", TOPICS)
def test_every_topic_renders_a_valid_card(catalog: CardCatalog, topic: str) -> None:
    card = catalog.render(decision(catalog, topic))
    assert card_problems(card) == []
    assert response_errors({"cards": [card]}) == []
    assert card["source"]["topic"]["code"] == topic
    spec_indicators = {  # clinical-rules.md sections 2-4; a topic the spec does not name keeps its card file's
        "cauda-equina": "critical",
        "red-flag": "warning",
        "imaging-appropriate": "info",
        "imaging-not-indicated": "warning",
        "repeat-imaging": "warning",
        "axspa-sij-imaging": "warning",
        "axspa-referral": "warning",
        "axspa-hla-b27": "info",
        "self-management": "info",
        "chronic-management": "info",
    }
    assert card["indicator"] == spec_indicators.get(topic, catalog.cards[topic].indicator)


def test_card_shows_criteria_checklist_with_states_data_and_citations(catalog: CardCatalog) -> None:
    card = catalog.render(decision(catalog, "self-management"), detail="full")
    detail = card["detail"]
    assert (
        "| **Met** | Back pain began before age 35 | Low back pain (SNOMED 279039007): age at onset 29 (2024-03-01)"
    ) in detail
    assert "| **Not documented** | Buttock pain | nothing recorded" in detail
    assert "| Not met | Current or past psoriasis | _no psoriasis on record_" in detail
    assert "C-reactive protein: 14 mg/L (2026-05-01)" in detail
    assert (
        "[NICE NG65 Spondyloarthritis in over 16s: recognition and referral]"
        "(https://www.nice.org.uk/guidance/ng65), 2017"
    ) in detail
    assert "ASAS classification criteria for axial spondyloarthritis, 2009" in detail


def test_compact_detail_shows_one_line_per_state_with_data(catalog: CardCatalog) -> None:
    detail = catalog.render(decision(catalog, "self-management"))["detail"]
    assert "| Status |" not in detail and "**Guidance:**" not in detail
    lines = detail.splitlines()
    met = [line for line in lines if line.startswith("- **Met:**")]
    not_met = [line for line in lines if line.startswith("- **Not met:**")]
    ask = [line for line in lines if line.startswith("- **Not documented — ask:**")]
    assert len(met) == len(not_met) == len(ask) == 1
    assert "back pain began before age 35 (Low back pain: age at onset 29, 2024-03-01)" in met[0]
    assert "elevated CRP (C-reactive protein: 14 mg/L, 2026-05-01)" in met[0]
    assert "current or past psoriasis" in not_met[0]
    assert "buttock pain" in ask[0]


def test_axspa_card_splits_entry_nice_and_supporting_criteria(catalog: CardCatalog) -> None:
    detail = catalog.render(decision(catalog, "axspa-referral"), detail="full")["detail"]
    entry, rest = detail.split("**NICE NG65 criteria", 1)
    nice, supporting = rest.split("**Supporting features", 1)
    assert "Back pain began before age 45" in entry
    assert "Back pain began before age 35" in nice and "Elevated CRP" not in nice
    assert "Elevated CRP" in supporting


def test_suggestions_labels_recommendation_and_actions(catalog: CardCatalog) -> None:
    card = catalog.render(decision(catalog, "imaging-not-indicated"))
    labels = [s["label"] for s in card["suggestions"]]
    assert labels == ["Remove the MRI lumbar spine order", "Refer to physiotherapy instead"]
    assert [s["isRecommended"] for s in card["suggestions"]] == [True, False]
    assert card["suggestions"][0]["actions"] == [ACTION_DELETE]
    assert card["selectionBehavior"] == "any"
    assert {r["system"] for r in card["overrideReasons"]} == {OVERRIDE_REASON_SYSTEM}
    referral = catalog.render(decision(catalog, "axspa-referral"))
    assert [s["label"] for s in referral["suggestions"]] == [
        "Refer to rheumatology",
        "Refer to rheumatology and order CRP and HLA-B27",
    ]
    assert referral["selectionBehavior"] == "at-most-one"


def test_each_render_gets_fresh_uuids(catalog: CardCatalog) -> None:
    d = decision(catalog, "axspa-referral")
    first, second = catalog.render(d), catalog.render(d)
    assert first["uuid"] != second["uuid"]
    assert first["suggestions"][0]["uuid"] != second["suggestions"][0]["uuid"]


def test_at_most_one_keeps_a_single_recommended_suggestion(catalog: CardCatalog) -> None:
    base = decision(catalog, "axspa-referral")
    both = Decision(
        **{
            **base.__dict__,
            "suggestions": tuple(SuggestionSpec(s.kind, s.actions, True, s.params) for s in base.suggestions),
        }
    )
    card = catalog.render(both)
    assert [s["isRecommended"] for s in card["suggestions"]] == [True, False]


def test_no_suggestions_means_no_selection_behavior(catalog: CardCatalog) -> None:
    base = decision(catalog, "imaging-not-indicated")
    card = catalog.render(Decision(**{**base.__dict__, "suggestions": ()}))
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_unknown_suggestion_kind_or_topic_is_a_render_error(catalog: CardCatalog) -> None:
    base = decision(catalog, "repeat-imaging")
    with pytest.raises(CardRenderError, match="order-hla-b27"):
        wrong = (SuggestionSpec("order-hla-b27", (ACTION_DELETE,)),)
        catalog.render(Decision(**{**base.__dict__, "suggestions": wrong}))
    with pytest.raises(CardRenderError, match="no card file"):
        catalog.render(Decision(**{**base.__dict__, "topic": "unknown-topic"}))


def test_data_incomplete_notice_from_record_or_params(catalog: CardCatalog) -> None:
    d = decision(catalog, "red-flag")
    record = PatientRecord(patient_id="p1", patient=None, resources=(), missing=("conditions", "medications"))
    assert "Data incomplete" in catalog.render(d, record)["detail"]
    assert "(conditions and medications)" in catalog.render(d, record)["detail"]
    assert "Data incomplete" in catalog.render(d, {"missing": ["crp"]})["detail"]
    assert "Data incomplete" in catalog.render(decision(catalog, "red-flag", partial=True, missing=["crp"]))["detail"]
    assert "Data incomplete" not in catalog.render(d, {"hook": "patient-view"})["detail"]


def test_skipped_resources_are_mentioned(catalog: CardCatalog) -> None:
    d = decision(catalog, "self-management", skipped_resources=["Observation/9: value is not a number"])
    assert "1 record entry could not be read" in catalog.render(d)["detail"]


# ---- summaries must stay under 140 characters with the longest values -------------------

LONGEST: dict[str, list[dict[str, Any]]] = {
    "cauda-equina": [{}],  # sampleParams already hold every cauda equina feature
    "red-flag": [
        {"red_flag_categories": ["cauda-equina", "neurological-deficit", "malignancy", "infection", "fracture"]}
    ],
    "imaging-appropriate": [
        {
            "reason": "red-flag",
            "red_flag_categories": ["cauda-equina", "neurological-deficit", "malignancy", "infection", "fracture"],
        },
        {"reason": "radicular-surgical-candidate"},
    ],
    "imaging-not-indicated": [{"case": "nonspecific", "radicular": True, "order_modality_display": "radiograph"}]
    + [{"case": c} for c in ("under-6-weeks", "no-conservative-care", "nonspecific", "duration-unknown")],
    "repeat-imaging": [{"prior_imaging_date": "2026-12-31T23:59:59+14:00"}, {"prior_imaging_date": None}],
    "axspa-sij-imaging": [{}],
    "axspa-referral": [{"nice_met_count": 9, "hla_b27_state": "positive"}],
    "axspa-hla-b27": [{"nice_met_count": 3}],
    "self-management": [{"duration_weeks": 11}, {"duration_weeks": None}, {"no_red_flags_confirmed": True}],
    "chronic-management": [
        {"duration_weeks": 5200, "physiotherapy_suggested": True, "no_red_flags_confirmed": False},
        {"duration_weeks": None, "physiotherapy_suggested": False, "no_red_flags_confirmed": True},
    ],
}


@pytest.mark.parametrize("topic", TOPICS)
def test_summary_under_140_with_longest_values(catalog: CardCatalog, topic: str, caplog) -> None:
    for params in LONGEST.get(topic, [{}]):  # a topic without long-value cases: its defaults
        card = catalog.render(decision(catalog, topic, **params))
        assert len(card["summary"]) < 140, card["summary"]
        assert "…" not in card["summary"], "summary was truncated"
        assert "truncated" not in caplog.text


def test_summary_truncation_is_a_safety_net(catalog: CardCatalog) -> None:
    long_features = [{"id": "x", "category": "cauda-equina", "display": "Feature " + "x" * 200, "evidence": []}]
    card = catalog.render(decision(catalog, "cauda-equina", cauda_equina_features=long_features))
    assert len(card["summary"]) < 140


def test_lenient_catalog_renders_missing_params_as_blank(tmp_path) -> None:
    lenient = CardCatalog.load(cards_module.default_cards_dir())
    bare = Decision(topic="self-management", rule="x", citations=(), criteria=(), params={})
    card = lenient.render(bare)
    assert card["summary"].startswith("Nonspecific low back pain")
    assert card_problems(card) == []


def test_module_level_render_uses_the_installed_catalog(catalog: CardCatalog) -> None:
    cards_module.set_default_catalog(catalog)
    card = cards_module.render(decision(catalog, "axspa-hla-b27"))
    assert card["source"]["topic"]["code"] == "axspa-hla-b27"
    assert cards_module.get_default_catalog() is catalog
