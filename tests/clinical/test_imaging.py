"""Imaging appropriateness: the six steps, order selection and the no-card cases."""

from __future__ import annotations

from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.clinical.model import State

from .builders import (
    CPT,
    ICD,
    LOINC,
    SNOMED,
    TODAY,
    age_birth,
    cc,
    condition,
    ct_order,
    days_ago,
    diagnostic_report,
    imaging_study,
    lbp,
    med_request,
    mri_order,
    patient,
    procedure,
    questionnaire_response,
    record,
    service_request,
    xr_order,
)
from .test_axspa import axspa_record


def one(decisions):
    assert len(decisions) == 1, [d.topic for d in decisions]
    return decisions[0]


def sign(run, *resources, orders=None, **kw):
    return run("order-sign", record(*resources, draft_orders=tuple(orders or (mri_order(rid="o1"),)), **kw))


# -- step 1 ------------------------------------------------------------------------------------------
def test_step1_cauda_equina_never_removes_the_order(run) -> None:
    card = one(sign(run, lbp(3), condition("449813001"), condition("363346000")))
    assert card.topic == "cauda-equina" and card.rule == "imaging.step-1"
    assert card.order_reference == "ServiceRequest/o1"
    assert card.suggestions == ()
    assert card.params["order_display"] == "MRI lumbar spine without contrast"
    assert card.params["imaging_step"] == 1


# -- step 2 ------------------------------------------------------------------------------------------
def test_step2_red_flags_make_imaging_appropriate(run) -> None:
    card = one(sign(run, lbp(3), condition("C50.911", ICD, clinical="resolved"), orders=[xr_order(rid="o1")]))
    assert (card.topic, card.rule, card.params["reason"]) == ("imaging-appropriate", "imaging.step-2", "red-flag")
    assert card.params["red_flag_ids"] == ["history-of-cancer"]
    assert [p["id"] for p in card.params["preferred_imaging"]] == ["malignancy"]
    assert card.params["order_modality"] == "xr"
    # rev 2: a radiograph for suspected cancer differs from the preferred MRI: replace, never remove
    assert card.params["order_matches_preferred"] is False
    assert card.params["preferred_study"] == "mri-without-and-with-contrast"
    assert [s.kind for s in card.suggestions] == ["replace-with-preferred-imaging"]


def test_step2_fracture_risk_prefers_radiograph(run) -> None:
    card = one(sign(run, lbp(3), pat=patient(age_birth(70))))
    assert card.topic == "imaging-appropriate"
    assert [p["id"] for p in card.params["preferred_imaging"]] == ["fracture"]


def test_age_69_is_not_a_red_flag(run) -> None:
    assert one(sign(run, lbp(3), pat=patient(age_birth(69)))).topic == "imaging-not-indicated"


# -- step 3 ------------------------------------------------------------------------------------------
def axspa_orders(run, order):
    rec = axspa_record(4)
    return run("order-sign", record(*rec.resources, pat=rec.patient, draft_orders=(order,)))


def test_step3_suspected_axspa_with_mri_replaces_with_sij_imaging(run) -> None:
    order = mri_order(rid="o1", reason=[cc("279039007", SNOMED, "Low back pain")])
    card = one(axspa_orders(run, order))
    assert (card.topic, card.rule) == ("axspa-sij-imaging", "imaging.step-3")
    suggestion = card.suggestions[0]
    assert suggestion.kind == "replace-with-sij-imaging" and suggestion.recommended
    delete, create = suggestion.actions
    assert delete == {"type": "delete", "description": delete["description"], "resourceId": "ServiceRequest/o1"}
    ServiceRequest.model_validate(create["resource"])
    codes = {(c["system"], c["code"]) for c in create["resource"]["code"]["coding"]}
    assert codes == {(LOINC, "24900-3"), (CPT, "72200")}
    assert create["resource"]["reasonCode"] == order["reasonCode"]
    assert card.params["nice_met_count"] == 4 and card.params["sij_study"] == "xr-sacroiliac-joints"


def test_step3_applies_to_ct_and_radiograph(run) -> None:
    # rev 2: a lumbar radiograph does not show the sacroiliac joints either
    assert one(axspa_orders(run, ct_order(rid="o1"))).topic == "axspa-sij-imaging"
    card = one(axspa_orders(run, xr_order(rid="o1")))
    assert card.topic == "axspa-sij-imaging"


def test_step3_with_hla_b27_branch(run) -> None:
    rec = axspa_record(3)
    card = one(run("order-sign", record(*rec.resources, pat=rec.patient, draft_orders=(mri_order(rid="o1"),))))
    assert card.topic == "axspa-sij-imaging" and card.params["axspa_outcome"] == "test-hla-b27"


# -- step 4 ------------------------------------------------------------------------------------------
def test_step4_repeat_imaging_from_each_source(run) -> None:
    sources = [
        imaging_study(started=days_ago(100), procedure_code=(CPT, "72148")),
        imaging_study(started=days_ago(100), body_site="122496007"),
        procedure("72100", CPT, performed=days_ago(200)),
        diagnostic_report("24968-0", LOINC, effective=days_ago(300)),
    ]
    for source in sources:
        card = one(sign(run, lbp(100), source))
        assert (card.topic, card.rule) == ("repeat-imaging", "imaging.step-4"), source["resourceType"]
        assert card.params["prior_imaging"][0]["reference"].startswith(source["resourceType"])
        assert [s.kind for s in card.suggestions] == ["remove-order"]


def test_step4_window_is_12_months(run) -> None:
    inside = diagnostic_report("24968-0", LOINC, effective=(TODAY.replace(year=TODAY.year - 1)).isoformat())
    outside = diagnostic_report("24968-0", LOINC, effective=days_ago(366))
    assert one(sign(run, lbp(100), inside)).topic == "repeat-imaging"
    assert one(sign(run, lbp(100), outside)).topic == "imaging-not-indicated"


def test_step4_ignores_cancelled_and_non_lumbar_imaging(run) -> None:
    cancelled = imaging_study(started=days_ago(10), procedure_code=(CPT, "72148"), status="cancelled")
    other = diagnostic_report("24627-2", LOINC, effective=days_ago(10))  # chest CT
    assert one(sign(run, lbp(100), cancelled, other)).topic == "imaging-not-indicated"


def test_red_flag_wins_over_repeat_imaging(run) -> None:
    card = one(sign(run, lbp(100), condition("64859006"), procedure("72100", CPT, performed=days_ago(20))))
    assert card.topic == "imaging-appropriate"


# -- step 5 ------------------------------------------------------------------------------------------
def radicular_case(days: int, care_days: int):
    return (lbp(days), condition("23056005"), med_request("5640", authored=days_ago(care_days)))


def test_step5_radicular_after_conservative_care_mri_appropriate(run) -> None:
    card = one(sign(run, *radicular_case(42, 42)))
    assert (card.topic, card.rule, card.params["reason"]) == (
        "imaging-appropriate",
        "imaging.step-5",
        "radicular-surgical-candidate",
    )
    assert card.params["conservative_care_evidence"]


def test_step5_boundaries(run) -> None:
    assert one(sign(run, *radicular_case(41, 41))).params["case"] == "under-6-weeks"
    assert one(sign(run, *radicular_case(60, 41))).params["case"] == "no-conservative-care"
    card = one(sign(run, *radicular_case(60, 50), orders=[ct_order(rid="o1")]))
    assert card.topic == "imaging-not-indicated" and card.params["case"] == "nonspecific"


def test_step5_needs_radicular_features(run) -> None:
    card = one(sign(run, lbp(60), med_request("5640", authored=days_ago(50))))
    assert card.params["case"] == "nonspecific"


def test_step5_radicular_from_questionnaire(run) -> None:
    card = one(
        sign(
            run,
            lbp(60),
            med_request("5640", authored=days_ago(50)),
            questionnaire_response({"leg-pain-below-knee": True}),
        )
    )
    assert card.rule == "imaging.step-5"


# -- step 6 ------------------------------------------------------------------------------------------
def test_step6_under_6_weeks(run) -> None:
    card = one(sign(run, lbp(41)))
    assert (card.topic, card.params["case"]) == ("imaging-not-indicated", "under-6-weeks")
    kinds = [s.kind for s in card.suggestions]
    assert kinds == ["remove-order", "refer-physiotherapy"]
    remove, physio = card.suggestions
    assert remove.recommended and remove.actions[0] == {
        "type": "delete",
        "description": remove.actions[0]["description"],
        "resourceId": "ServiceRequest/o1",
    }
    resource = physio.actions[0]["resource"]
    ServiceRequest.model_validate(resource)
    assert resource["code"]["coding"][0]["code"] == "306170007"
    assert resource["encounter"] == {"reference": "Encounter/enc1"}
    assert resource["requester"] == {"reference": "Practitioner/dr1"}
    assert {c.id for c in card.citations} >= {"acp-2011", "choosing-wisely-lbp", "nice-ng59"}


def test_step6_exactly_6_weeks_without_conservative_care(run) -> None:
    assert one(sign(run, lbp(42))).params["case"] == "no-conservative-care"


def test_step6_duration_unknown(run) -> None:
    card = one(sign(run, lbp(None)))
    assert card.params["case"] == "duration-unknown" and card.params["duration_days"] is None


def test_step6_onset_from_recorded_date_is_flagged(run) -> None:
    card = one(sign(run, lbp(None, recorded=days_ago(10))))
    assert card.params["onset_from_recorded_date"] is True and card.params["case"] == "under-6-weeks"


def test_criteria_checklist_for_step6(run) -> None:
    card = one(sign(run, lbp(10)))
    ids = [c.id for c in card.criteria]
    assert ids == [
        "imaging-lumbar-order",
        "imaging-back-pain",
        "imaging-cauda-equina",
        "imaging-red-flags",
        "imaging-suspected-axspa",
        "imaging-prior-imaging",
        "imaging-radicular",
        "imaging-duration-6-weeks",
        "imaging-conservative-care",
        "imaging-order-is-mri",
    ]


# -- which orders ----------------------------------------------------------------------------------
def test_one_card_per_lumbar_imaging_order(run) -> None:
    orders = [
        mri_order(rid="o1"),
        xr_order(rid="o2"),
        service_request("1988-5", LOINC, rid="lab"),
        service_request("71046", CPT, rid="chest"),
    ]
    decisions = sign(run, lbp(10), orders=orders)
    assert [d.order_reference for d in decisions] == ["ServiceRequest/o1", "ServiceRequest/o2"]


def test_order_select_only_looks_at_selections(run) -> None:
    rec = record(lbp(10), draft_orders=(mri_order(rid="o1"), xr_order(rid="o2")), selections=("ServiceRequest/o2",))
    decisions = run("order-select", rec)
    assert [d.order_reference for d in decisions] == ["ServiceRequest/o2"]
    assert run("order-select", record(lbp(10), draft_orders=(mri_order(rid="o1"),))) == []
    absolute = ("http://ehr.example/fhir/ServiceRequest/o1/_history/2",)
    rec = record(lbp(10), draft_orders=(mri_order(rid="o1"),), selections=absolute)
    assert len(run("order-select", rec)) == 1
    rec = record(lbp(10), draft_orders=(mri_order(rid="o1"),), selections=("MedicationRequest/o1",))
    assert run("order-select", rec) == []


def test_order_status_and_bundle_entries(run) -> None:
    orders = [
        {"resource": mri_order(rid="o1")},
        mri_order(rid="o2", status="completed"),
        mri_order(rid="o3", status="on-hold"),
    ]
    decisions = sign(run, lbp(10), orders=orders)
    assert [d.order_reference for d in decisions] == ["ServiceRequest/o1", "ServiceRequest/o3"]
    no_status = mri_order(rid="o4")
    del no_status["status"]
    assert one(sign(run, lbp(10), orders=[no_status])).order_reference == "ServiceRequest/o4"


def test_lumbar_orders_by_loinc_and_snomed(run) -> None:
    loinc = service_request("30679-5", LOINC, rid="o1")
    snomed = service_request("840361000", SNOMED, rid="o2")
    decisions = sign(run, lbp(10), orders=[loinc, snomed])
    assert [d.params["order_modality"] for d in decisions] == ["mri", "xr"]


def test_no_back_pain_no_imaging_card(run) -> None:
    assert sign(run, condition("363346000")) == []
    assert sign(run, lbp(10, clinical="resolved")) == []


def test_back_pain_from_order_reason_only(run) -> None:
    order = mri_order(rid="o1", reason=[cc("M54.50", ICD)])
    card = one(sign(run, orders=[order]))
    assert card.topic == "imaging-not-indicated" and card.params["case"] == "duration-unknown"
    assert card.params["back_pain_from_order_reason"] is True
    unrelated = mri_order(rid="o2", reason=[cc("J45.909", ICD)])
    assert sign(run, orders=[unrelated]) == []


def test_back_pain_from_order_reason_reference(run) -> None:
    cond = lbp(10, clinical="resolved", rid="c9")
    order = mri_order(rid="o1")
    order["reasonReference"] = [{"reference": "Condition/c9"}]
    assert one(sign(run, cond, orders=[order])).topic == "imaging-not-indicated"


def test_patient_view_has_no_imaging_cards(run) -> None:
    rec = record(lbp(10), draft_orders=(mri_order(rid="o1"),))
    assert all(not d.topic.startswith("imaging") for d in run("patient-view", rec))



def test_red_flags_unrecorded_are_not_documented_not_silently_not_met(run) -> None:
    """No red flag recorded either way: the checklist says "not documented", never "not met"."""
    states = {c.id: c.state for c in one(sign(run, lbp(14))).criteria}
    assert states["imaging-cauda-equina"] is State.NOT_DOCUMENTED
    assert states["imaging-red-flags"] is State.NOT_DOCUMENTED


def test_step5_radicular_feature_from_the_order_reason(run) -> None:
    """An MRI ordered for lumbar radiculopathy (ICD-10-CM M54.16) after 6 weeks of conservative care:
    the order's reason supplies the radicular feature (positive); without it, not indicated (negative);
    the same reason under 6 weeks stays not indicated (boundary)."""
    reason = [cc("M54.16", ICD, "Radiculopathy, lumbar region")]
    care = med_request("5640", authored=days_ago(50))
    card = one(sign(run, lbp(60), care, orders=[mri_order(rid="o1", reason=reason)]))
    assert (card.topic, card.params["imaging_step"]) == ("imaging-appropriate", 5)
    states = {c.id: c for c in card.criteria}
    assert states["imaging-radicular"].state is State.MET
    assert "Order reason" in states["imaging-radicular"].evidence[0].text
    assert one(sign(run, lbp(60), care, orders=[mri_order(rid="o1")])).topic == "imaging-not-indicated"
    assert one(sign(run, lbp(41), care, orders=[mri_order(rid="o1", reason=reason)])).params["case"] == "under-6-weeks"
