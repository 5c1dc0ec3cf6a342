"""Suggestions carry the draft order's reason (issue 13): the physiotherapy referral offered instead of
lumbar imaging, and the SI-joint radiograph that replaces it for suspected axSpA, copy the order's
reasonCode; the chronic-management referral names the back pain and what it is for."""

from __future__ import annotations

from .builders import ICD, cc, lbp, mri_order, record
from .test_axspa import axspa_record

ORDER_REASON = cc("M54.50", ICD, "Low back pain, unspecified")


def created(decision, kind):
    [suggestion] = [s for s in decision.suggestions if s.kind == kind]
    return [a["resource"] for a in suggestion.actions if a["type"] == "create"]


def test_physiotherapy_suggestion_copies_the_order_reason(run) -> None:
    order = mri_order(rid="o1", reason=[ORDER_REASON])
    [card] = run("order-sign", record(lbp(14), draft_orders=(order,)))
    assert card.topic == "imaging-not-indicated"
    [referral] = created(card, "refer-physiotherapy")
    assert referral["reasonCode"] == [ORDER_REASON]


def test_sij_imaging_suggestion_copies_the_order_reason(run) -> None:
    rec = axspa_record(4)
    order = mri_order(rid="o2", reason=[ORDER_REASON])
    [card] = run("order-sign", record(*rec.resources, pat=rec.patient, draft_orders=(order,)))
    assert card.topic == "axspa-sij-imaging"
    [sij] = created(card, "replace-with-sij-imaging")
    assert sij["reasonCode"] == [ORDER_REASON]
