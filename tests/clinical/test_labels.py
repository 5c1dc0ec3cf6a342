"""Every id the clinical rules can emit has its words in cards/labels/*.yaml (issue 11: card wording out of
Python), and every label's {placeholders} are filled by the parameters the rules send with the id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cds_service.cards import load_labels
from cds_service.clinical.facts import CATEGORY_ORDER, RED_FLAGS
from cds_service.clinical.imaging_orders import ACCEPTABLE_STUDIES, CONTRASTS, MODALITIES

from .builders import (
    age_birth,
    condition,
    days_ago,
    diagnostic_report,
    lbp,
    med_request,
    mri_order,
    patient,
    questionnaire_response,
    record,
    xr_order,
)
from .test_axspa import axspa_record

CARDS = Path(__file__).resolve().parents[2] / "cards"
PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


@pytest.fixture(scope="module")
def labels():
    return load_labels(CARDS)


def _scenarios():
    """Records that reach every rule and step: the union of their criteria is what the rules emit."""
    rad = (condition("23056005", onset=days_ago(60)), lbp(60), med_request("5640", authored=days_ago(50)))
    sij_text = dict(mri_order(rid="o9"), code={"text": "MRI lumbar spine and sacroiliac joints"})
    ax = axspa_record(4)
    return [
        ("patient-view", record(lbp(5), condition("267064002"), condition("363346000"), pat=patient(age_birth(75)))),
        ("patient-view", record(lbp(20), condition("363346000"))),
        ("patient-view", record(lbp(20))),
        ("patient-view", axspa_record(4)),
        ("patient-view", axspa_record(3)),
        ("order-sign", record(lbp(5), condition("267064002"), draft_orders=(mri_order(rid="o1"),))),
        ("order-sign", record(lbp(5), condition("363346000"), draft_orders=(xr_order(rid="o1"),))),
        ("order-sign", record(*ax.resources, pat=ax.patient, draft_orders=(mri_order(rid="o1"),))),
        ("order-sign", record(*ax.resources, pat=ax.patient, draft_orders=(sij_text,))),
        (
            "order-sign",
            record(lbp(90), diagnostic_report("24968-0", effective=days_ago(30)), draft_orders=(mri_order(rid="o1"),)),
        ),
        ("order-sign", record(*rad, draft_orders=(mri_order(rid="o1"),))),
        ("order-sign", record(lbp(3), questionnaire_response({"fever": False}), draft_orders=(mri_order(rid="o1"),))),
    ]


def test_every_emitted_criterion_has_a_label_with_its_placeholders_filled(run, labels) -> None:
    seen: set[str] = set()
    for hook, rec in _scenarios():
        for decision in run(hook, rec):
            for criterion in decision.criteria:
                seen.add(criterion.id)
                text = labels.criterion(criterion.id, criterion.label_params)
                assert text != criterion.id, f"no label for criterion {criterion.id!r}"
                assert not PLACEHOLDER.search(text), f"{criterion.id}: unfilled placeholder in {text!r}"
    # the scenarios really reached every rule family
    for prefix in ("red-flag-", "imaging-", "entry-", "nice-", "asas-", "sm-"):
        assert any(s.startswith(prefix) for s in seen), prefix
    assert "imaging-order-images-sij" in seen and "imaging-order-is-mri" in seen


def test_every_red_flag_has_a_name(run, labels) -> None:
    for spec in RED_FLAGS:
        assert spec.id in labels["red-flags"], spec.id
    # label placeholders are those the catalogue fills
    decisions = run("patient-view", record(lbp(20), condition("363346000"), pat=patient(age_birth(75))))
    for decision in decisions:
        for flag in decision.params["red_flags"]:
            assert not PLACEHOLDER.search(labels.text("red-flags", flag["id"], flag["label_params"]))


def test_every_study_modality_and_preferred_category_has_words(labels) -> None:
    studies = {"mri", "ct", "xr", "xr-sacroiliac-joints"}
    studies |= {f"{m}-{c}-contrast" for m in ("mri", "ct") for c, _ in CONTRASTS}
    studies |= {s for options in ACCEPTABLE_STUDIES.values() for s in options}
    assert studies <= set(labels["studies"]), studies - set(labels["studies"])
    assert {m for m, _ in MODALITIES} <= set(labels["modalities"])
    assert set(CATEGORY_ORDER) <= set(labels["preferred"])


def test_no_label_group_holds_an_id_twice(tmp_path) -> None:
    from cds_service.cards import CardFileError

    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.yaml").write_text("criteria:\n  x: One\n", encoding="utf-8")
    (tmp_path / "labels" / "b.yaml").write_text("criteria:\n  x: Two\n", encoding="utf-8")
    with pytest.raises(CardFileError, match="defined twice"):
        load_labels(tmp_path)
