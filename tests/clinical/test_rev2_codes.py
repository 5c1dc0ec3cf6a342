"""Clinical rules rev 2, section 1 "Codes from other systems": WHO ICD-10, text-only imaging orders,
text-only Conditions (not matched), and imaging step 3 for orders that already image the SI joints."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.clinical.imaging_orders import classify_text, lumbar_imaging_orders
from cds_service.clinical.model import State

from .builders import SNOMED, condition, lbp, record
from .test_axspa import axspa_record

WHO = "http://hl7.org/fhir/sid/icd-10"


def who(code: str, **kw: Any) -> dict[str, Any]:
    return condition(code, WHO, **kw)


def flag(facts, flag_id):
    return next(f for f in facts.red_flags if f.id == flag_id).finding


# -- WHO ICD-10 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["M54.5", "M545", "M54.56", "M54.4", "M54.3"])
def test_who_icd10_low_back_pain_opens_an_episode(facts_of, code) -> None:
    assert facts_of(record(who(code, onset="2025-05-01"))).episode.present


@pytest.mark.parametrize("code", ["M54.2", "M54.9", "M48.0", "M54.1"])
def test_who_icd10_codes_that_are_not_low_back_pain(facts_of, code) -> None:
    assert not facts_of(record(who(code, onset="2025-05-01"))).episode.present


@pytest.mark.parametrize(
    ("code", "radicular"), [("M54.16", True), ("M48.06", True), ("M48.07", True), ("M48.061", False), ("M48.0", False)]
)
def test_who_icd10_radicular_codes_listed_explicitly(facts_of, code, radicular) -> None:
    """WHO has no M48.061 (ICD-10-CM only): it is not matched under the WHO system."""
    assert facts_of(record(lbp(), who(code))).radicular.met is radicular


def test_who_oid_spelling_is_the_same_system(facts_of) -> None:
    rec = record(condition("M54.5", "urn:oid:2.16.840.1.113883.6.3", onset="2025-05-01"))
    assert facts_of(rec).episode.present


@pytest.mark.parametrize(
    ("code", "flag_id"),
    [
        ("C50.9", "history-of-cancer"),
        ("C97", "history-of-cancer"),
        ("Z85.3", "history-of-cancer"),
        ("G83.4", "cauda-equina-syndrome"),
        ("R33", "urinary-retention"),
        ("B22", "immunosuppression"),
        ("D84.9", "immunosuppression"),
        ("M81.0", "osteoporosis"),
        ("R63.4", "unexplained-weight-loss"),
    ],
)
def test_who_icd10_red_flags(facts_of, code, flag_id) -> None:
    assert flag(facts_of(record(lbp(), who(code, clinical="active"))), flag_id).met


def test_icd10cm_is_not_widened_by_the_who_list(facts_of) -> None:
    """ICD-10-CM lists HIV as B20 only: B22 under the CM system stays unmatched (no alias between systems)."""
    cm = "http://hl7.org/fhir/sid/icd-10-cm"
    assert not flag(facts_of(record(lbp(), condition("B22", cm))), "immunosuppression").met
    assert flag(facts_of(record(lbp(), condition("B20", cm))), "immunosuppression").met


def test_conditions_coded_only_as_text_are_not_matched(facts_of) -> None:
    text_only = {
        "resourceType": "Condition",
        "id": "t1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "Low back pain"},
        "onsetDateTime": "2025-05-01",
    }
    cancer_text = {**text_only, "id": "t2", "code": {"text": "History of breast cancer"}}
    facts = facts_of(record(text_only, cancer_text))
    assert not facts.episode.present
    assert flag(facts, "history-of-cancer").state is State.NOT_DOCUMENTED


# -- text-only imaging orders ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "modality", "contrast"),
    [
        ("MRI lumbar spine", "mri", None),
        ("MRI L-spine w/o contrast", "mri", "without"),
        ("MR LUMBAR SPINE WITHOUT AND WITH CONTRAST", "mri", "without-and-with"),
        ("mri l spine w/wo", "mri", "without-and-with"),
        ("Lumbar MRI with contrast", "mri", "with"),
        ("XR L-spine", "xr", None),
        ("X-ray lumbosacral spine 2 views", "xr", None),
        ("LS-spine radiographs", "xr", None),
        ("CT lumbar spine", "ct", None),
        ("CT L/S spine non-contrast", "ct", "without"),
        ("Thoracolumbar spine MRI", "mri", None),
        ("MRI L4-L5", "mri", None),
    ],
)
def test_text_recognised_as_lumbar_imaging(knowledge, text, modality, contrast) -> None:
    assert classify_text(text, knowledge) == (modality, contrast)


@pytest.mark.parametrize(
    "text",
    [
        "MRI cervical spine",
        "XR thoracic spine",
        "XR hip left",
        "Lumbar puncture",
        "CT-guided lumbar facet injection",
        "Fluoroscopy guided lumbar epidural steroid injection",
        "Lumbar spine consult",  # no modality
        "MRI brain",
        "Ultrasound abdomen",
        "CT myelogram lumbar",
    ],
)
def test_text_not_recognised_as_lumbar_imaging(knowledge, text) -> None:
    assert classify_text(text, knowledge) is None


def _text_order(text: str, rid: str = "o1", coding: list | None = None) -> dict[str, Any]:
    code: dict[str, Any] = {"text": text}
    if coding:
        code["coding"] = coding
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "code": code,
        "subject": {"reference": "Patient/p1"},
        "reasonCode": [{"coding": [{"system": SNOMED, "code": "279039007"}]}],
    }


def test_text_only_order_gets_an_imaging_card_marked_recognised_from_text(run) -> None:
    [card] = run("order-sign", record(lbp(3), draft_orders=(_text_order("MRI lumbar spine"),)))
    assert card.topic == "imaging-not-indicated" and card.params["order_from_text"] is True
    order_row = next(c for c in card.criteria if c.id == "imaging-lumbar-order")
    assert order_row.evidence[0].value == "recognised from text"


def test_order_with_a_local_code_is_read_from_its_text(run) -> None:
    local = [{"system": "urn:oid:1.2.3.4.5", "code": "RAD123", "display": "XR L-SPINE 2V"}]
    [card] = run("order-sign", record(lbp(3), draft_orders=(_text_order("", coding=local),)))
    assert card.params["order_modality"] == "xr" and card.params["order_from_text"] is True


def test_coded_lumbar_order_is_not_marked_as_text(run) -> None:
    coded = [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}]
    [card] = run("order-sign", record(lbp(3), draft_orders=(_text_order("whatever", coding=coded),)))
    assert card.params["order_from_text"] is False and card.params["order_study"] == "mri-without-contrast"


def test_text_orders_for_other_sites_get_no_card(run) -> None:
    orders = (_text_order("MRI cervical spine", "a"), _text_order("XR knee", "b"), _text_order("Lumbar puncture", "c"))
    assert run("order-sign", record(lbp(3), draft_orders=orders)) == []


def test_order_select_still_only_reads_the_selected_text_order(knowledge) -> None:
    rec = record(
        lbp(3),
        draft_orders=(_text_order("MRI lumbar spine", "a"), _text_order("XR L-spine", "b")),
        selections=("ServiceRequest/b",),
    )
    assert [o.modality for o in lumbar_imaging_orders(rec, knowledge, "order-select")] == ["xr"]


# -- step 3 and orders that already image the SI joints --------------------------------------------
def _axspa_with(order: dict[str, Any]):
    rec = axspa_record(4)
    return record(*rec.resources, pat=rec.patient, draft_orders=(order,))


@pytest.mark.parametrize(
    "text", ["MRI lumbar spine and sacroiliac joints", "XR lumbar spine and pelvis", "MRI L-spine + SI joints"]
)
def test_order_that_images_the_si_joints_by_text_gets_no_sij_card(run, text) -> None:
    [card] = run("order-sign", _axspa_with(_text_order(text)))
    assert card.topic == "imaging-not-indicated"  # falls through to step 4 / 6
    assert any(c.id == "imaging-order-images-sij" and c.state is State.MET for c in card.criteria)


@pytest.mark.parametrize(("system", "code"), [(SNOMED, "726546000"), ("http://loinc.org", "24975-5")])
def test_coded_lumbar_and_sij_study_gets_no_sij_card(run, system, code) -> None:
    order = _text_order("", coding=[{"system": system, "code": code}])
    [card] = run("order-sign", _axspa_with(order))
    assert card.topic != "axspa-sij-imaging"


@pytest.mark.parametrize("text", ["MRI lumbar spine", "XR L-spine", "CT lumbar spine"])
def test_lumbar_only_order_of_any_modality_gets_the_sij_card(run, text) -> None:
    [card] = run("order-sign", _axspa_with(_text_order(text)))
    assert card.topic == "axspa-sij-imaging"
    assert [s.kind for s in card.suggestions] == ["replace-with-sij-imaging"]


def test_sij_order_with_prior_imaging_falls_through_to_repeat_imaging(run) -> None:
    from .builders import days_ago, diagnostic_report

    rec = axspa_record(4)
    prior = diagnostic_report("24968-0", effective=days_ago(60))
    rec = record(
        *rec.resources, prior, pat=rec.patient, draft_orders=(_text_order("MRI lumbar spine and sacroiliac joints"),)
    )
    [card] = run("order-sign", rec)
    assert card.topic == "repeat-imaging"


def test_invalid_imaging_text_patterns_name_the_file_and_key(tmp_path) -> None:
    from cds_service.clinical.imaging_text import ImagingText, ImagingTextError

    bad = tmp_path / "imaging-order-text.yaml"
    bad.write_text("lumbar: ['(unclosed']\nmodality: {mri: ['mri']}\ncontrast: {}\n", encoding="utf-8")
    with pytest.raises(ImagingTextError, match=r"imaging-order-text.yaml: lumbar: invalid regex"):
        ImagingText.load(bad)
    bad.write_text("lumbar: ['lumbar']\nmodality: [mri]\ncontrast: {}\n", encoding="utf-8")
    with pytest.raises(ImagingTextError, match="modality"):
        ImagingText.load(bad)
