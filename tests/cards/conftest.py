"""Card tests: a strict catalog (undefined template variables fail) and hand-built Decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.cards import CardCatalog
from cds_service.clinical.model import Citation, Criterion, Decision, Evidence, State, SuggestionSpec

REPO = Path(__file__).resolve().parents[2]
CARDS_DIR = REPO / "cards"


@pytest.fixture(scope="session")
def catalog() -> CardCatalog:
    return CardCatalog.load(CARDS_DIR, strict=True)


def criteria() -> tuple[Criterion, ...]:
    return (
        Criterion(
            "nice-onset-before-35",
            State.MET,
            (Evidence("Condition/c1", "Low back pain (SNOMED 279039007)", "2024-03-01", "age at onset 29"),),
            label_params={"age": 35},
        ),
        Criterion("nice-buttock-pain", State.NOT_DOCUMENTED),
        Criterion("nice-psoriasis", State.NOT_MET, note="no psoriasis on record"),
        Criterion(
            "asas-elevated-crp",
            State.MET,
            (Evidence("Observation/o1", "C-reactive protein", "2026-05-01T08:00:00Z", "14 mg/L"),),
        ),
        Criterion("entry-onset-before-45", State.MET, label_params={"age": 45}),
    )


CITATIONS = (
    Citation(
        "nice-ng65",
        "NICE NG65 Spondyloarthritis in over 16s: recognition and referral",
        "2017",
        "https://www.nice.org.uk/guidance/ng65",
    ),
    Citation("asas-2009", "ASAS classification criteria for axial spondyloarthritis", "2009"),
)

ACTION_DELETE = {
    "type": "delete",
    "description": "Remove the draft lumbar MRI order",
    "resourceId": "ServiceRequest/order-1",
}
ACTION_CREATE = {
    "type": "create",
    "description": "Create a referral",
    "resource": {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "306290009"}]},
    },
}

# Suggestions each topic's rule produces (docs/clinical-logic.md, "Suggestions").
SUGGESTIONS: dict[str, tuple[SuggestionSpec, ...]] = {
    "imaging-not-indicated": (
        SuggestionSpec("remove-order", (ACTION_DELETE,), True, {"order_display": "MRI lumbar spine"}),
        SuggestionSpec("refer-physiotherapy", (ACTION_CREATE,), False, {"order_display": "MRI lumbar spine"}),
    ),
    "repeat-imaging": (SuggestionSpec("remove-order", (ACTION_DELETE,), True, {"order_display": "CT lumbar"}),),
    "axspa-sij-imaging": (
        SuggestionSpec(
            "replace-with-sij-imaging",
            (ACTION_DELETE, ACTION_CREATE),
            True,
            {"order_display": "MRI lumbar spine", "replacement_display": "XR Sacroiliac Joint Views"},
        ),
    ),
    "axspa-referral": (
        SuggestionSpec("refer-rheumatology", (ACTION_CREATE,), True),
        SuggestionSpec(
            "refer-rheumatology-with-labs",
            (ACTION_CREATE, ACTION_CREATE),
            False,
            {"labs": ["CRP", "HLA-B27"], "labs_text": "CRP and HLA-B27"},
        ),
    ),
    "axspa-hla-b27": (SuggestionSpec("order-hla-b27", (ACTION_CREATE,), True),),
    "chronic-management": (SuggestionSpec("refer-physiotherapy", (ACTION_CREATE,), False),),
}


def decision(catalog: CardCatalog, topic: str, **params) -> Decision:
    """A Decision for *topic* with the card file's sampleParams (overridable)."""
    merged = {**catalog.cards[topic].sample_params, **params}
    return Decision(
        topic=topic,
        rule=f"test.{topic}",
        citations=CITATIONS,
        criteria=criteria(),
        params=merged,
        suggestions=SUGGESTIONS.get(topic, ()),
        order_reference="ServiceRequest/order-1" if "order_display" in merged else None,
    )
