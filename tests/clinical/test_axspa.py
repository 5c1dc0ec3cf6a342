"""NICE NG65 axSpA recognition and referral: entry, counting, HLA-B27 branch, skip rules, ASAS features."""

from __future__ import annotations

from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.clinical.axspa import assess_axspa
from cds_service.clinical.dates import add_months, add_years
from cds_service.clinical.model import State

from .builders import (
    ICD,
    SNOMED,
    TODAY,
    age_birth,
    condition,
    crp,
    days_ago,
    family_history,
    hla_b27,
    lbp,
    patient,
    questionnaire_response,
    record,
    service_request,
)
from .conftest import topics

QR_CRITERIA = ["night-waking-second-half", "buttock-pain", "improves-with-movement", "nsaid-response-within-48h"]


def criteria_resources(n: int) -> list[dict]:
    """Resources meeting exactly n NICE criteria (onset-before-35 not among them)."""
    qr_items = {link: True for link in QR_CRITERIA[:n]}
    extra = [
        condition("9014002", clinical="resolved"),
        condition("3723001"),
        condition("11654001"),
        family_history("MTH", "9631008"),
    ][: max(0, n - len(QR_CRITERIA))]
    return [questionnaire_response(qr_items, authored=days_ago(2)), *extra]


def axspa_record(n: int, *extra: dict, onset_age: int = 39, age: int = 42, onset: str | None = None):
    """Patient aged `age`, back pain since age `onset_age` (entry met), n NICE criteria met."""
    onset = onset or add_years(TODAY, -(age - onset_age)).isoformat()
    return record(lbp(None, onset=onset), *criteria_resources(n), *extra, pat=patient(age_birth(age)))


def only(decisions, topic):
    found = [d for d in decisions if d.topic.startswith("axspa")]
    assert topics(found) == [topic], topics(decisions)
    return found[0]


# -- counting -------------------------------------------------------------------------------------
def test_four_criteria_refer_with_labs(run) -> None:
    card = only(run("patient-view", axspa_record(4)), "axspa-referral")
    assert card.params["nice_met_count"] == 4 and card.params["referral_reason"] == "4-or-more"
    assert [s.kind for s in card.suggestions] == ["refer-rheumatology", "refer-rheumatology-with-labs"]
    assert card.suggestions[0].recommended and not card.suggestions[1].recommended
    assert card.params["labs_to_order"] == ["crp", "hla-b27"]
    assert card.suggestions[1].params == {"labs": ["CRP", "HLA-B27"], "labs_text": "CRP and HLA-B27"}
    assert {c.id for c in card.citations} >= {"nice-ng65", "asas-2009"}


def test_more_than_four_criteria_refer(run) -> None:
    card = only(run("patient-view", axspa_record(8)), "axspa-referral")
    assert card.params["nice_met_count"] == 8


def test_exactly_three_with_hla_b27_positive_refers(run) -> None:
    card = only(run("patient-view", axspa_record(3, hla_b27(value_string="positive"))), "axspa-referral")
    assert card.params["referral_reason"] == "3-and-hla-b27-positive"
    assert card.params["labs_to_order"] == ["crp"]
    assert card.params["hla_b27_state"] == "positive"


def test_exactly_three_without_hla_b27_asks_for_the_test(run) -> None:
    card = only(run("patient-view", axspa_record(3)), "axspa-hla-b27")
    assert [s.kind for s in card.suggestions] == ["order-hla-b27"]
    resource = card.suggestions[0].actions[0]["resource"]
    ServiceRequest.model_validate(resource)
    assert resource["code"]["coding"][0]["code"] == "4821-5"


def test_exactly_three_with_hla_b27_negative_or_unreadable(run) -> None:
    # no axSpA card; the back pain is chronic and nonspecific, so spec section 4 (rev 2) gives chronic-management
    assert topics(run("patient-view", axspa_record(3, hla_b27(value_cc=(SNOMED, "260385009"))))) == [
        "chronic-management"
    ]
    # an unreadable HLA-B27 result is "no result": test
    only(run("patient-view", axspa_record(3, hla_b27(value_string="pending"))), "axspa-hla-b27")


def test_two_criteria_no_card(run) -> None:
    assert not [d for d in run("patient-view", axspa_record(2)) if d.topic.startswith("axspa")]


def test_not_documented_criteria_do_not_count_and_are_shown(run) -> None:
    card = only(run("patient-view", axspa_record(4)), "axspa-referral")
    states = {c["id"]: c["state"] for c in card.params["nice_criteria"]}
    assert states["nice-family-history"] == "not-documented"
    assert states["nice-onset-before-35"] == "not-met"
    assert card.params["nice_not_documented_count"] == 4


def test_negative_questionnaire_answers_are_not_met(knowledge, facts_of) -> None:
    rec = axspa_record(0, questionnaire_response({"buttock-pain": False}, authored=days_ago(1)))
    result = assess_axspa(facts_of(rec), knowledge)
    assert next(c for c in result.nice if c.id == "nice-buttock-pain").state is State.NOT_MET


# -- onset and duration boundaries -------------------------------------------------------------------
def test_onset_before_35_boundary(knowledge, facts_of) -> None:
    def onset_criterion(onset_age: int) -> State:
        result = assess_axspa(facts_of(axspa_record(3, onset_age=onset_age)), knowledge)
        return next(c for c in result.nice if c.id == "nice-onset-before-35").state

    assert onset_criterion(34) is State.MET
    assert onset_criterion(35) is State.NOT_MET  # exactly 35 is not "before 35"


def test_onset_before_35_makes_the_fourth_criterion(run) -> None:
    only(run("patient-view", axspa_record(3, onset_age=34)), "axspa-referral")


def test_entry_onset_before_45_boundary(run) -> None:
    assert only(run("patient-view", axspa_record(4, onset_age=44, age=47)), "axspa-referral")
    assert not [d for d in run("patient-view", axspa_record(4, onset_age=45, age=47)) if d.topic.startswith("axspa")]


def test_entry_more_than_3_months_boundary(run, knowledge, facts_of) -> None:
    exactly = add_months(TODAY, -3).isoformat()
    one_more_day = add_months(TODAY, -3).replace(day=add_months(TODAY, -3).day - 1).isoformat()
    result = assess_axspa(facts_of(axspa_record(4, onset=exactly)), knowledge)
    assert result.outcome == "entry-not-met"
    assert next(c for c in result.entry if c.id == "entry-duration-over-3-months").state is State.NOT_MET
    assert only(run("patient-view", axspa_record(4, onset=one_more_day)), "axspa-referral")


def test_missing_birthdate_means_entry_not_documented(knowledge, facts_of) -> None:
    rec = record(lbp(400), *criteria_resources(4), pat=patient(None))
    result = assess_axspa(facts_of(rec), knowledge)
    assert result.outcome == "entry-not-met"
    entry = next(c for c in result.entry if c.id == "entry-onset-before-45")
    assert entry.state is State.NOT_DOCUMENTED and "birth date" in entry.note


def test_no_back_pain_no_card(run) -> None:
    rec = record(*criteria_resources(6), pat=patient(age_birth(30)))
    assert run("patient-view", rec) == []


def test_onset_from_recorded_date_is_noted(run) -> None:
    rec = record(lbp(None, recorded=days_ago(400)), *criteria_resources(4), pat=patient(age_birth(30)))
    card = only(run("patient-view", rec), "axspa-referral")
    assert card.params["onset_from_recorded_date"] is True
    entry = next(c for c in card.criteria if c.id == "entry-duration-over-3-months")
    assert "recorded" in entry.note


# -- skip rules -------------------------------------------------------------------------------------
def test_skip_when_axspa_already_diagnosed(run) -> None:
    assert run("patient-view", axspa_record(5, condition("M45.9", ICD))) == []
    assert run("patient-view", axspa_record(5, condition("713777005"))) == []


def test_skip_when_recently_referred(run) -> None:
    recent = service_request("306290009", status="active", authored=days_ago(200))
    completed = service_request("306290009", status="completed", authored=days_ago(364))
    old = service_request("306290009", status="completed", authored=days_ago(400))
    revoked = service_request("306290009", status="revoked", authored=days_ago(10))
    # skipped: no axSpA card (the chronic-management card of spec section 4 rev 2 may still show)
    assert topics(run("patient-view", axspa_record(5, recent))) == ["chronic-management"]
    assert topics(run("patient-view", axspa_record(5, completed))) == ["chronic-management"]
    only(run("patient-view", axspa_record(5, old)), "axspa-referral")
    only(run("patient-view", axspa_record(5, revoked)), "axspa-referral")


# -- labs in the referral ---------------------------------------------------------------------------
def test_recent_labs_are_not_reordered(run) -> None:
    card = only(
        run("patient-view", axspa_record(4, crp(12.0, days=30), hla_b27(value_string="negative"))), "axspa-referral"
    )
    assert card.params["labs_to_order"] == []
    assert [s.kind for s in card.suggestions] == ["refer-rheumatology"]
    assert card.params["crp_state"] == "elevated"


def test_old_labs_are_reordered(run) -> None:
    card = only(run("patient-view", axspa_record(4, crp(2.0, days=400))), "axspa-referral")
    assert card.params["labs_to_order"] == ["crp", "hla-b27"]
    with_labs = card.suggestions[1]
    codes = [a["resource"]["code"]["coding"][0]["code"] for a in with_labs.actions]
    assert codes == ["306290009", "1988-5", "4821-5"]
    for action in with_labs.actions:
        ServiceRequest.model_validate(action["resource"])


def test_referral_carries_reason_and_supporting_info(run) -> None:
    card = only(run("patient-view", axspa_record(5)), "axspa-referral")
    resource = card.suggestions[0].actions[0]["resource"]
    assert resource["reasonCode"][0]["coding"][0]["code"] == "279039007"
    refs = [s["reference"] for s in resource["supportingInfo"]]
    assert any(r.startswith("QuestionnaireResponse/") for r in refs)
    assert any(r.startswith("Condition/") for r in refs)
    assert all("#" not in r for r in refs)


# -- ASAS supporting features -----------------------------------------------------------------------
def test_criteria_checklist_has_entry_nice_and_asas(run) -> None:
    card = only(run("patient-view", axspa_record(4)), "axspa-referral")
    ids = [c.id for c in card.criteria]
    assert ids[:3] == ["entry-back-pain", "entry-onset-before-45", "entry-duration-over-3-months"]
    assert len([i for i in ids if i.startswith("nice-")]) == 9
    assert {"asas-elevated-crp", "asas-hla-b27", "asas-uveitis", "asas-inflammatory-bowel-disease"} <= set(ids)


def test_asas_features_are_supporting_only(run) -> None:
    rec = axspa_record(2, condition("128473001"), condition("K50.90", ICD), crp(30.0), hla_b27(interpretation="NEG"))
    assert not [d for d in run("patient-view", rec) if d.topic.startswith("axspa")]  # 2 NICE + ASAS: no card
    card = only(
        run("patient-view", axspa_record(4, condition("128473001"), condition("K50.90", ICD), crp(30.0))),
        "axspa-referral",
    )
    asas = {c["id"]: c["state"] for c in card.params["asas_features"]}
    assert asas["asas-uveitis"] == "met" and asas["asas-inflammatory-bowel-disease"] == "met"
    assert asas["asas-elevated-crp"] == "met" and asas["asas-hla-b27"] == "not-documented"


def test_inflammatory_back_pain_asas(knowledge, facts_of) -> None:
    def ibp(answers: dict, onset_age: int = 30) -> State:
        rec = record(
            lbp(None, onset=add_years(TODAY, -(42 - onset_age)).isoformat()),
            questionnaire_response(answers),
            pat=patient(age_birth(42)),
        )
        result = assess_axspa(facts_of(rec), knowledge)
        return next(c for c in result.asas if c.id == "asas-inflammatory-back-pain").state

    yes = {"insidious-onset": True, "improves-with-movement": True, "no-improvement-with-rest": True}
    assert ibp(yes) is State.MET  # + onset < 40 = 4 of 5
    assert ibp(yes, onset_age=41) is State.NOT_DOCUMENTED  # 3 met, night pain unknown
    assert ibp({**yes, "night-waking-second-half": False}, onset_age=41) is State.NOT_MET


def test_family_history_first_degree_only(knowledge, facts_of) -> None:
    def state(relationship: str) -> State:
        rec = axspa_record(0, family_history(relationship, "9631008"))
        return next(c for c in assess_axspa(facts_of(rec), knowledge).nice if c.id == "nice-family-history").state

    assert state("FTH") is State.MET
    assert state("SIS") is State.MET
    assert state("COUSN") is State.NOT_DOCUMENTED
