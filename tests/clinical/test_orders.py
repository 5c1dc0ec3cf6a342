"""Created ServiceRequests are complete, valid R4 and deterministic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.clinical.orders import (
    OrderContext,
    order_hla_b27,
    refer_physiotherapy,
    refer_rheumatology,
    refer_rheumatology_with_labs,
    remove_order,
    replace_with_sij_imaging,
)

NOW = datetime(2025, 6, 15, 10, 30, tzinfo=UTC)
REASON = [{"coding": [{"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}]}]


def ctx(user: str | None = "PractitionerRole/r1", encounter: str | None = "e1") -> OrderContext:
    return OrderContext("p1", encounter, user, NOW)


def created(spec) -> list[dict]:
    return [a["resource"] for a in spec.actions if a["type"] == "create"]


ALL = [
    lambda c: refer_physiotherapy(c, REASON, ["Condition/c1"]),
    lambda c: refer_rheumatology(c, REASON, ["Condition/c1", "QuestionnaireResponse/q1#buttock-pain"]),
    lambda c: refer_rheumatology_with_labs(c, ["crp", "hla-b27"], REASON, ["Condition/c1"]),
    lambda c: order_hla_b27(c, REASON, ["Condition/c1"]),
    lambda c: replace_with_sij_imaging(c, "ServiceRequest/o1", "MRI lumbar", REASON),
]


@pytest.mark.parametrize("build", ALL)
def test_every_created_resource_is_complete_and_valid(build) -> None:
    spec = build(ctx())
    for resource in created(spec):
        ServiceRequest.model_validate(resource)
        assert resource["status"] == "draft"
        assert resource["intent"] in ("order", "proposal")
        assert resource["subject"] == {"reference": "Patient/p1"}
        assert resource["encounter"] == {"reference": "Encounter/e1"}
        assert resource["requester"] == {"reference": "PractitionerRole/r1"}
        assert resource["code"]["coding"][0]["display"] and resource["code"]["text"]
        assert resource["reasonCode"] == REASON
        assert resource["id"] and resource["authoredOn"].startswith("2025-06-15")
    for action in spec.actions:
        assert action["description"] and len(action["description"]) < 120


def test_ids_are_deterministic_and_distinct() -> None:
    first = created(refer_rheumatology_with_labs(ctx(), ["crp", "hla-b27"], REASON, []))
    again = created(refer_rheumatology_with_labs(ctx(), ["crp", "hla-b27"], REASON, []))
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert len({r["id"] for r in first}) == 3


def test_requester_only_for_practitioners_and_encounter_optional() -> None:
    resource = created(refer_rheumatology(OrderContext("p1", None, "Patient/p1", NOW), REASON, []))[0]
    assert "requester" not in resource and "encounter" not in resource
    assert "supportingInfo" not in resource


def test_supporting_info_strips_fragments_and_duplicates() -> None:
    resource = created(
        refer_rheumatology(
            ctx(),
            REASON,
            ["QuestionnaireResponse/q1#a", "QuestionnaireResponse/q1#b", "Condition/c1", "not a reference"],
        )
    )[0]
    assert resource["supportingInfo"] == [{"reference": "QuestionnaireResponse/q1"}, {"reference": "Condition/c1"}]


def test_invalid_reason_codes_from_the_ehr_are_dropped() -> None:
    bad = [{"coding": "oops"}, "text", *REASON]
    resource = created(order_hla_b27(ctx(), bad, []))[0]
    assert resource["reasonCode"] == REASON


def test_remove_order_is_a_delete_with_resource_id() -> None:
    spec = remove_order("ServiceRequest/o1", "MRI lumbar spine")
    assert spec.kind == "remove-order" and spec.recommended
    assert spec.actions == (
        {
            "type": "delete",
            "description": "Remove the draft order: MRI lumbar spine",
            "resourceId": "ServiceRequest/o1",
        },
    )
    assert spec.params == {"order_display": "MRI lumbar spine"}


def test_lab_codes_and_intents() -> None:
    resources = created(refer_rheumatology_with_labs(ctx(), ["hla-b27"], REASON, []))
    assert [(r["code"]["coding"][0]["code"], r["intent"]) for r in resources] == [
        ("306290009", "proposal"),
        ("4821-5", "order"),
    ]
    sij = created(replace_with_sij_imaging(ctx(), "ServiceRequest/o1", "MRI", REASON))[0]
    assert sij["intent"] == "order" and sij["category"][0]["coding"][0]["code"] == "363679005"
