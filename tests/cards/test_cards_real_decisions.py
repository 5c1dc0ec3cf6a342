"""Cards rendered from the clinical engine's real Decisions for every fixture patient and hook.

The catalog is strict: a template variable the engine does not supply fails here, so the card
files and docs/clinical-logic.md ("Decision parameters for card templates") cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cds_service.cards import CardCatalog
from cds_service.clinical import evaluate
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import EvaluationInput, PatientRecord
from cds_service.protocol import response_errors
from cds_service.tooling.fixtures import load_manifest

from .conftest import REPO
from .test_card_render import card_problems

MANIFEST = load_manifest(REPO / "fixtures")
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return Knowledge.load(None)


@pytest.mark.parametrize("spec", MANIFEST.fixtures, ids=lambda s: s.slug)
def test_real_decisions_render_valid_cards(catalog: CardCatalog, knowledge: Knowledge, spec) -> None:
    fixture = spec.load(NOW.date())
    record = PatientRecord(
        patient_id=fixture.patient_id,
        patient=fixture.patient,
        resources=tuple(r for r in fixture.resources if r["resourceType"] != "Patient"),
        draft_orders=tuple(fixture.orders),
        selections=spec.selected,
    )
    hooks = ["patient-view", "order-select", "order-sign"] if spec.orders else ["patient-view"]
    for hook in hooks:
        decisions = evaluate(EvaluationInput(hook, record, NOW), knowledge)
        cards = [catalog.render(d, record) for d in decisions]
        for card in cards:
            assert card_problems(card) == [], (hook, card["summary"])
            assert "…" not in card["summary"], "summary had to be truncated"
        assert response_errors({"cards": cards}) == []
