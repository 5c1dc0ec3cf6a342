"""Clinical rules rev 2, section 2 step 2 (and step 5): the ORDERED study compared with what the ACR Low
Back Pain 2021 variant rates usually appropriate; a differing order gets a suggestion that replaces it
with the preferred study (delete the draft + create the preferred ServiceRequest), never a bare remove."""

from __future__ import annotations

from typing import Any

import pytest

from .builders import (
    CPT,
    LOINC,
    SNOMED,
    age_birth,
    condition,
    days_ago,
    lbp,
    med_request,
    patient,
    record,
    service_request,
    temperature,
)

REASON = [{"coding": [{"system": SNOMED, "code": "279039007", "display": "Low back pain"}]}]


def order(code: str, system: str = CPT, text: str | None = None) -> dict[str, Any]:
    res = service_request(code, system, rid="o1", reason=REASON)
    if text is not None:
        res["code"] = {"text": text}
    return res


def decide(run, *resources, draft, pat=None):
    [card] = run("order-sign", record(*resources, pat=pat or patient(), draft_orders=(draft,)))
    return card


CANCER = condition("363346000")
FOOT_DROP = condition("6077001")
OLD = patient(age_birth(72))


@pytest.mark.parametrize(
    ("flags", "pat", "draft", "preferred"),
    [
        # suspected cancer: MRI without and with, or without, contrast
        ([CANCER], None, order("72100"), "mri-without-and-with-contrast"),
        ([CANCER], None, order("72131"), "mri-without-and-with-contrast"),
        ([CANCER], None, order("72149"), "mri-without-and-with-contrast"),  # with contrast only
        ([CANCER], None, order("72148"), None),
        ([CANCER], None, order("72158"), None),
        ([CANCER], None, order("24968-0", LOINC), None),  # MRI, contrast not specified
        # suspected infection
        ([temperature(38.6)], None, order("24963-1", LOINC), "mri-without-and-with-contrast"),
        ([temperature(38.6)], None, order("24967-2", LOINC), None),
        # fracture risk (age 72): radiograph, MRI without contrast, or CT
        ([], OLD, order("72100"), None),
        ([], OLD, order("72131"), None),
        ([], OLD, order("24963-1", LOINC), None),  # CT, contrast not specified
        ([], OLD, order("72133"), "xr"),  # CT without and with contrast: not rated usually appropriate
        ([], OLD, order("72132"), "xr"),
        ([], OLD, order("72148"), None),
        ([], OLD, order("72149"), "xr"),
        ([], OLD, order("72158"), "xr"),
        # severe / progressive deficit: MRI without contrast
        ([FOOT_DROP], None, order("72148"), None),
        ([FOOT_DROP], None, order("72158"), "mri-without-contrast"),
        ([FOOT_DROP], None, order("72110"), "mri-without-contrast"),
        # several categories: the study every one of them accepts
        ([CANCER], OLD, order("72100"), "mri-without-contrast"),
        ([CANCER, FOOT_DROP], None, order("72158"), "mri-without-contrast"),
        ([CANCER], OLD, order("72148"), None),
        # text-only orders are compared the same way
        ([CANCER], None, order("x", text="XR L-spine 2 views"), "mri-without-and-with-contrast"),
        ([], OLD, order("x", text="MRI lumbar spine with contrast"), "xr"),
        ([], OLD, order("x", text="MRI lumbar spine"), None),
    ],
)
def test_ordered_versus_preferred_study(run, flags, pat, draft, preferred) -> None:
    card = decide(run, lbp(3), *flags, draft=draft, pat=pat)
    assert (card.topic, card.rule) == ("imaging-appropriate", "imaging.step-2")
    assert card.params["order_matches_preferred"] is (preferred is None)
    kinds = [s.kind for s in card.suggestions]
    assert "remove-order" not in kinds
    if preferred is None:
        assert kinds == []
    else:
        assert card.params["preferred_study"] == preferred and kinds == ["replace-with-preferred-imaging"]


def test_replace_suggestion_deletes_the_draft_and_creates_the_preferred_study(run) -> None:
    card = decide(run, lbp(3), CANCER, draft=order("72100"))
    [suggestion] = card.suggestions
    delete, create = suggestion.actions
    assert delete == {**delete, "type": "delete", "resourceId": "ServiceRequest/o1"}
    assert create["type"] == "create"
    resource = create["resource"]
    codes = {(c["system"], c["code"]) for c in resource["code"]["coding"]}
    assert codes == {(LOINC, "24967-2"), (CPT, "72158")}
    assert resource["reasonCode"] == REASON and resource["status"] == "draft" and resource["intent"] == "order"
    assert suggestion.recommended is True


@pytest.mark.parametrize(
    ("study", "codes"), [("xr", {"24972-2", "72100"}), ("mri-without-contrast", {"30679-5", "72148"})]
)
def test_replacement_codes(run, study, codes) -> None:
    draft = order("72149") if study == "xr" else order("72158")
    flags = [] if study == "xr" else [FOOT_DROP]
    card = decide(run, lbp(3), *flags, draft=draft, pat=OLD if study == "xr" else None)
    resource = card.suggestions[0].actions[1]["resource"]
    assert {c["code"] for c in resource["code"]["coding"]} == codes


# -- step 5: radicular surgical candidate -----------------------------------------------------------
def _radicular(draft):
    return (
        condition("23056005", onset=days_ago(60)),
        lbp(60),
        med_request("5640", authored=days_ago(50)),
    ), draft


@pytest.mark.parametrize(("code", "replace"), [("72148", False), ("24968-0", False), ("72158", True), ("72149", True)])
def test_step5_mri_with_contrast_is_replaced_by_mri_without(run, code, replace) -> None:
    resources, draft = _radicular(order(code, LOINC if "-" in code else CPT))
    card = decide(run, *resources, draft=draft)
    assert (card.topic, card.rule) == ("imaging-appropriate", "imaging.step-5")
    assert card.params["order_matches_preferred"] is (not replace)
    assert [s.kind for s in card.suggestions] == (["replace-with-preferred-imaging"] if replace else [])
    if replace:
        assert card.params["preferred_study"] == "mri-without-contrast"
