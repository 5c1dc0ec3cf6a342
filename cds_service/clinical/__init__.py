"""Clinical decision logic for low back pain: FHIR JSON -> PatientFacts -> rules -> Decisions.

Pure: no HTTP, no file I/O (knowledge is loaded once at start-up), no clock (``now`` is passed in).
This logic supports clinical judgement and never replaces it.
"""

from __future__ import annotations

from cds_service.clinical.axspa import evaluate_axspa
from cds_service.clinical.chronic_management import evaluate_chronic_management
from cds_service.clinical.dates import site_zone, zone_of
from cds_service.clinical.facts import PatientFacts, build_facts
from cds_service.clinical.imaging import ORDER_HOOKS, evaluate_imaging
from cds_service.clinical.knowledge import Knowledge, KnowledgeError
from cds_service.clinical.model import Decision, EvaluationInput
from cds_service.clinical.orders import OrderContext
from cds_service.clinical.red_flags import evaluate_red_flags
from cds_service.clinical.self_management import evaluate_self_management

PATIENT_VIEW = "patient-view"


def evaluate(inp: EvaluationInput, knowledge: Knowledge) -> list[Decision]:
    """Decisions for one hook call: patient-view -> red-flag/cauda-equina, axSpA, self-management,
    chronic-management;
    order-select/order-sign -> one imaging decision per lumbar imaging order; other hooks -> none.

    Offset dateTimes are read in the zone of ``inp.now`` (the site zone). Patients under
    minimum_age_years (16; a partial birthDate that may be under it included) get no card at all (rev 2):
    NICE NG59/NG65 cover over-16s and ACR rates paediatric back pain separately."""
    if inp.hook != PATIENT_VIEW and inp.hook not in ORDER_HOOKS:
        return []
    with site_zone(zone_of(inp.now)):
        return _evaluate(inp, knowledge)


def _evaluate(inp: EvaluationInput, knowledge: Knowledge) -> list[Decision]:
    facts = inp.facts if inp.facts is not None else build_facts(inp.record, knowledge, inp.now)
    if under_minimum_age(facts, knowledge):
        return []
    ctx = OrderContext.from_record(inp.record, inp.now)
    if inp.hook == PATIENT_VIEW:
        decisions = evaluate_red_flags(facts, knowledge)
        axspa = evaluate_axspa(facts, knowledge, ctx)
        decisions += axspa
        decisions += evaluate_self_management(facts, knowledge, axspa_card_shown=bool(axspa))
        decisions += evaluate_chronic_management(facts, inp.record, knowledge, ctx, axspa_card_shown=bool(axspa))
        return decisions
    return evaluate_imaging(facts, inp.record, knowledge, inp.hook, ctx)


def under_minimum_age(facts: PatientFacts, knowledge: Knowledge) -> bool:
    """True when the patient is, or may be (partial birthDate), younger than minimum_age_years."""
    return facts.age_range is not None and facts.age_range[0] < knowledge.thresholds.minimum_age_years


__all__ = ["evaluate", "build_facts", "under_minimum_age", "Knowledge", "KnowledgeError", "PatientFacts"]
