"""The cards' `smart` link: which decisions get it, what it asks, and that the mapping data is sound."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cds_service.cards import CardCatalog
from cds_service.clinical import evaluate
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Criterion, Decision, EvaluationInput, PatientRecord, State
from cds_service.settings import Settings
from cds_service.smart.form import load_questionnaire, walk
from cds_service.smart.links import questionnaire_map, smart_link
from cds_service.tooling.fixtures import load_manifest

URL = "https://cds.example.org/smart/launch"


def decision(*criteria: tuple[str, State], topic: str = "axspa-hla-b27") -> Decision:
    return Decision(
        topic=topic,
        rule="test",
        citations=(),
        criteria=tuple(Criterion(id=cid, state=state) for cid, state in criteria),
    )


@pytest.fixture(scope="module")
def engine_criteria() -> set[str]:
    """Every criterion id the clinical engine produces on the fixture patients (patient-view)."""
    knowledge = Knowledge.load(None)
    now = datetime.now(UTC)
    ids: set[str] = set()
    for spec in load_manifest().fixtures:
        fixture = spec.load(now.date())
        record = PatientRecord(fixture.patient_id, fixture.patient, tuple(fixture.resources))
        for hook in ("patient-view", "order-sign"):
            record_for_hook = (
                record
                if hook == "patient-view"
                else PatientRecord(
                    fixture.patient_id, fixture.patient, tuple(fixture.resources), draft_orders=tuple(fixture.orders)
                )
            )
            for d in evaluate(EvaluationInput(hook, record_for_hook, now), knowledge):
                ids.update(c.id for c in d.criteria)
    return ids


def test_mapping_names_only_real_items_and_criteria(engine_criteria: set[str]) -> None:
    items = {i["linkId"]: i for i in walk(load_questionnaire()["item"])}
    mapping = questionnaire_map()
    for criterion, link_ids in mapping["criteria"].items():
        assert criterion in engine_criteria, criterion
        assert link_ids and all(items[link]["type"] not in {"group", "display"} for link in link_ids), criterion
    assert set(mapping["ask"]) == {k for k, v in items.items() if v["type"] not in {"group", "display"}}
    assert set(mapping["prefill"]) <= set(items)


def test_not_documented_questionnaire_criterion_gets_the_link() -> None:
    link = smart_link(decision(("nice-night-waking", State.MET), ("nice-nsaid-response", State.NOT_DOCUMENTED)), URL)
    assert link == {
        "label": "Ask about: NSAID response",
        "url": URL,
        "type": "smart",
        "appContext": json.dumps({"linkIds": ["nsaid-response-within-48h"]}),
    }


def test_met_and_not_met_criteria_get_no_link() -> None:
    assert smart_link(decision(("nice-nsaid-response", State.MET), ("red-flag-fever", State.NOT_MET)), URL) is None


def test_not_documented_criterion_the_questionnaire_does_not_capture_gets_no_link() -> None:
    assert (
        smart_link(decision(("nice-family-history", State.NOT_DOCUMENTED), ("asas-hla-b27", State.NOT_DOCUMENTED)), URL)
        is None
    )


def test_label_names_three_items_then_counts_the_rest() -> None:
    three = smart_link(decision(("asas-inflammatory-back-pain", State.NOT_DOCUMENTED)), URL)
    assert three is not None and three["label"].endswith("and 1 more")  # four items
    assert json.loads(three["appContext"])["linkIds"][0] == "insidious-onset"
    exact = smart_link(
        decision(
            ("red-flag-fever", State.NOT_DOCUMENTED),
            ("red-flag-iv-drug-use", State.NOT_DOCUMENTED),
            ("red-flag-immunosuppression", State.NOT_DOCUMENTED),
        ),
        URL,
    )
    assert exact is not None and exact["label"] == "Ask about: fever, injected drugs, immunosuppression"


def test_items_are_not_repeated() -> None:
    link = smart_link(
        decision(("nice-night-waking", State.NOT_DOCUMENTED), ("asas-inflammatory-back-pain", State.NOT_DOCUMENTED)),
        URL,
    )
    ids = json.loads(link["appContext"])["linkIds"]
    assert len(ids) == len(set(ids)) == 4


def test_rendered_card_carries_the_link_with_the_public_base_url(tmp_path: Path) -> None:
    from cds_service.app import create_app

    app = create_app(
        Settings(
            environment="development",
            public_base_url="https://cds.example.org",
            data_dir=tmp_path,
            log_level="WARNING",
            console_enabled=False,
        ).validate()
    )
    catalog: CardCatalog = app.extensions["cds"].catalog
    asked = decision(("nice-nsaid-response", State.NOT_DOCUMENTED), topic="red-flag")
    with app.app_context():
        card = catalog.render(asked)
        plain = catalog.render(decision(("nice-nsaid-response", State.MET), topic="red-flag"))
    assert [link for link in card["links"] if link["type"] == "smart"][0]["url"] == URL
    assert not [link for link in plain.get("links", []) if link.get("type") == "smart"]
    app.extensions["cds"].fhir.close()


def test_no_link_when_this_service_does_not_serve_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Production without CDS_SMART_SECRET_KEY: /smart/ is off, so cards must not point at it."""
    from cds_service.app import create_app

    monkeypatch.delenv("CDS_SMART_SECRET_KEY", raising=False)
    app = create_app(
        Settings(
            environment="production",
            public_base_url="https://cds.example.org",
            auth_mode="off",
            data_dir=tmp_path,
            log_level="WARNING",
            auto_migrate=True,
        ).validate()
    )
    asked = decision(("nice-nsaid-response", State.NOT_DOCUMENTED), topic="red-flag")
    with app.app_context():
        card = app.extensions["cds"].catalog.render(asked)
    assert "cds_smart" not in app.extensions
    assert not [link for link in card.get("links", []) if link.get("type") == "smart"]
    app.extensions["cds"].fhir.close()
