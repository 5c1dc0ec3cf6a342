"""Imaging appropriateness for draft lumbar spine imaging orders (spec section 2).

One card per lumbar imaging order; the first matching step decides:
1 cauda equina -> cauda-equina; 2 other red flag -> imaging-appropriate (rev 2: the ordered study is
compared with what the ACR variant rates usually appropriate; when they differ, a suggestion replaces the
order with the preferred study); 3 suspected axSpA and lumbar imaging of any modality (rev 2) that does not
already image the SI joints/pelvis -> axspa-sij-imaging; 4 prior lumbar imaging in the window ->
repeat-imaging; 5 radicular pain/stenosis, >= 6 weeks, conservative care, MRI -> imaging-appropriate (an MRI
with contrast gets the replace-with-MRI-without-contrast suggestion); 6 otherwise -> imaging-not-indicated.
Orders that are not lumbar imaging, and orders for patients with no back pain on record and no back
pain reason on the order, get no card. "6 weeks or more" = duration in days >= 42 (config).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cds_service.clinical.axspa import AxSpaAssessment, assess_axspa, axspa_params
from cds_service.clinical.citations import (
    ACP_2011,
    ACP_APS_2007,
    ACR_LBP_2021,
    ACR_SACROILIITIS_2016,
    CHOOSING_WISELY,
    EULAR_IMAGING_2015,
    NICE_NG59,
    NICE_NG65,
)
from cds_service.clinical.codes import describe_coding
from cds_service.clinical.decision_params import (
    base_params,
    criterion,
    evidence_line,
    red_flag_criteria,
    red_flag_params,
)
from cds_service.clinical.facts import Finding, PatientFacts, RedFlag
from cds_service.clinical.fhir_read import reference_of
from cds_service.clinical.imaging_orders import (
    ImagingOrder,
    lumbar_imaging_orders,
    order_back_pain_reason,
    preferred_study,
)
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import (
    Citation,
    Criterion,
    Decision,
    Evidence,
    PatientRecord,
    State,
    SuggestionSpec,
)
from cds_service.clinical.orders import (
    OrderContext,
    SuggestionBuildError,
    refer_physiotherapy,
    remove_order,
    replace_with_sij_imaging,
    replace_with_study,
)

ORDER_HOOKS = frozenset({"order-select", "order-sign"})


def _order_params(order: ImagingOrder, step: int, from_reason: bool) -> dict[str, Any]:
    return {
        "order_reference": order.reference,
        "order_display": order.display,
        "order_modality": order.modality,
        "order_study": order.study,
        "order_from_text": order.from_text,
        "imaging_step": step,
        "back_pain_from_order_reason": from_reason,
    }


def _met(evidence: tuple[Evidence, ...] = (), note: str | None = None) -> Finding:
    return Finding(State.MET, evidence, note)


def _state(flag: bool, evidence: tuple[Evidence, ...] = (), note: str | None = None) -> Finding:
    return Finding(State.MET if flag else State.NOT_MET, evidence, note)


def _radicular_with_order_reason(found: Finding, order: dict[str, Any], knowledge: Knowledge) -> Finding:
    """Radicular features also come from the draft order's reasonCode (spec section 1: the episode
    includes the order's reason), e.g. an MRI ordered for lumbar radiculopathy M54.16."""
    reasons = order.get("reasonCode")
    matched = [
        coding
        for concept in (reasons if isinstance(reasons, list) else [])
        if (coding := knowledge.match("radicular-pain", concept))
    ]
    if not matched:
        return found
    evidence = tuple(Evidence(reference_of(order), f"Order reason: {describe_coding(c)}") for c in matched)
    return Finding(State.MET, found.evidence + evidence if found.met else evidence, found.note if found.met else None)


def _red_flag_group(group: Sequence[RedFlag]) -> Finding:
    """Met when any flag is met; not met only when every flag was explicitly answered "no";
    otherwise not documented -- absence of a recorded red flag is not evidence it was asked about."""
    met = [f for f in group if f.finding.met]
    if met:
        return Finding(State.MET, tuple(e for f in met for e in f.finding.evidence))
    if group and all(f.finding.state is State.NOT_MET for f in group):
        return Finding(State.NOT_MET, tuple(e for f in group for e in f.finding.evidence))
    return Finding(State.NOT_DOCUMENTED, (), "none recorded; ask about them before ordering")


def evaluate_order(
    order: ImagingOrder, facts: PatientFacts, knowledge: Knowledge, ctx: OrderContext
) -> Decision | None:
    t = knowledge.thresholds
    reason = order_back_pain_reason(order.resource, knowledge, facts)
    if not facts.episode.present and reason is None:
        return None
    base = base_params(facts, knowledge)
    pain_evidence = facts.episode.conditions + ((reason,) if reason else ())
    criteria: list[Criterion] = [
        criterion("imaging-lumbar-order", _met((order.evidence(),)), modality=order.modality),
        criterion("imaging-back-pain", _met(pain_evidence)),
    ]
    flags = facts.met_red_flags()
    cauda = [f for f in flags if f.category == "cauda-equina"]
    criteria.append(
        criterion("imaging-cauda-equina", _red_flag_group([f for f in facts.red_flags if f.category == "cauda-equina"]))
    )
    from_reason = not facts.episode.present
    reasons = list(order.resource.get("reasonCode") or [])

    def decision(
        topic: str,
        step: int,
        citations: tuple[Citation, ...],
        extra: dict[str, Any],
        suggestions: Sequence[SuggestionSpec] = (),
        more: tuple[Criterion, ...] = (),
    ) -> Decision:
        return Decision(
            topic=topic,
            rule=f"imaging.step-{step}",
            citations=citations,
            criteria=(*criteria, *more),
            params={**base, **_order_params(order, step, from_reason), **extra},
            suggestions=tuple(suggestions),
            order_reference=order.reference,
        )

    # Step 1: cauda equina -- emergency; never suggest removing the order.
    if cauda:
        return decision(
            "cauda-equina",
            1,
            (NICE_NG59, ACR_LBP_2021, ACP_APS_2007),
            red_flag_params(flags),
            more=red_flag_criteria(facts),
        )
    others = [f for f in flags if f.category != "cauda-equina"]
    criteria.append(
        criterion("imaging-red-flags", _red_flag_group([f for f in facts.red_flags if f.category != "cauda-equina"]))
    )
    # Step 2: other red flags -- imaging appropriate; (rev 2) the ordered study is compared with the studies
    # the ACR variant rates usually appropriate, and a differing order gets a replace suggestion (never remove).
    if others:
        categories = list(dict.fromkeys(f.category for f in others))
        preferred = preferred_study(categories, order)
        return decision(
            "imaging-appropriate",
            2,
            (ACR_LBP_2021, ACP_APS_2007, NICE_NG59),
            {"reason": "red-flag", **red_flag_params(others), **_preference(order, preferred)},
            _replace(ctx, order, preferred, reasons),
            more=red_flag_criteria(facts),
        )
    # Step 3: suspected axSpA and a lumbar CT/MRI -- image the SI joints instead.
    axspa = assess_axspa(facts, knowledge, reason)
    criteria.append(
        criterion("imaging-suspected-axspa", _state(axspa.suspected, note=f"NICE NG65 assessment: {axspa.outcome}"))
    )
    if axspa.suspected and order.images_sacroiliac:
        criteria.append(
            criterion("imaging-order-images-sij", _met((order.evidence(),), "the order already images the SI joints"))
        )
    if axspa.suspected and not order.images_sacroiliac:
        suggestions = _try(
            lambda: replace_with_sij_imaging(ctx, order.reference, order.display, reasons, _evidence_refs(axspa))
        )
        extra = {**axspa_params(facts, axspa), "sij_study": "xr-sacroiliac-joints"}
        return decision(
            "axspa-sij-imaging",
            3,
            (EULAR_IMAGING_2015, ACR_SACROILIITIS_2016, NICE_NG65),
            extra,
            suggestions,
            more=(*axspa.nice,),
        )
    # Step 4: repeat imaging within the window.
    window = t.prior_imaging_window_months
    criteria.append(
        criterion("imaging-prior-imaging", _state(bool(facts.prior_imaging), facts.prior_imaging), months=window)
    )
    if facts.prior_imaging:
        prior = [{"reference": e.reference, "display": e.text, "date": e.date} for e in facts.prior_imaging]
        extra = {
            "prior_imaging": prior,
            "prior_imaging_date": prior[0]["date"],
            "prior_imaging_display": prior[0]["display"],
            "window_months": window,
        }
        return decision(
            "repeat-imaging",
            4,
            (ACR_LBP_2021, ACP_2011, CHOOSING_WISELY),
            extra,
            _try(lambda: remove_order(order.reference, order.display, recommended=False)),
        )
    # Step 5: radicular pain/stenosis, >= 6 weeks, conservative care, MRI: intervention candidate.
    defer_days = 7 * t.imaging_defer_weeks
    duration = facts.episode.duration_days
    long_enough = duration is not None and duration >= defer_days
    care = facts.conservative_care
    radicular = _radicular_with_order_reason(facts.radicular, order.resource, knowledge)
    criteria.extend(
        [
            criterion("imaging-radicular", radicular),
            criterion(
                "imaging-duration-6-weeks",
                Finding(State.NOT_DOCUMENTED, (), "onset not documented")
                if duration is None
                else _state(
                    long_enough,
                    (facts.episode.onset_evidence,) if facts.episode.onset_evidence else (),
                    f"{duration} days" + (f"; {facts.episode.onset_note}" if facts.episode.onset_note else ""),
                ),
                weeks=t.imaging_defer_weeks,
            ),
            criterion("imaging-conservative-care", care, weeks=t.conservative_care_min_weeks),
            criterion("imaging-order-is-mri", _state(order.modality == "mri")),
        ]
    )
    care_lines = [evidence_line(e) for e in care.evidence] if care.met else []
    if radicular.met and long_enough and care.met and order.modality == "mri":
        preferred = preferred_study(["radicular"], order)
        return decision(
            "imaging-appropriate",
            5,
            (ACR_LBP_2021, NICE_NG59),
            {
                "reason": "radicular-surgical-candidate",
                "conservative_care_evidence": care_lines,
                **_preference(order, preferred, "mri-without-contrast"),
            },
            _replace(ctx, order, preferred, reasons),
        )
    # Step 6: imaging not indicated.
    if duration is None:
        case = "duration-unknown"
    elif duration < defer_days:
        case = "under-6-weeks"
    elif not care.met:
        case = "no-conservative-care"
    else:
        case = "nonspecific"
    suggestions = _try(lambda: remove_order(order.reference, order.display, recommended=True))
    suggestions += _try(lambda: refer_physiotherapy(ctx, reasons, [e.reference for e in pain_evidence]))
    extra = {
        "case": case,
        "defer_weeks": t.imaging_defer_weeks,
        "conservative_care": care.met,
        "conservative_care_evidence": care_lines,
    }
    return decision(
        "imaging-not-indicated", 6, (ACP_2011, CHOOSING_WISELY, NICE_NG59, ACR_LBP_2021), extra, suggestions
    )


def _preference(order: ImagingOrder, preferred: str | None, default: str | None = None) -> dict[str, Any]:
    """Decision params of the ordered-versus-preferred comparison (study ids: cards/labels/imaging.yaml)."""
    return {
        "ordered_study": order.study,
        "preferred_study": preferred or default or order.study,
        "order_matches_preferred": preferred is None,
    }


def _replace(ctx: OrderContext, order: ImagingOrder, preferred: str | None, reasons: list[Any]) -> list[SuggestionSpec]:
    """Replace the draft with the preferred study (delete + create, carrying its reasonCode); none if it matches."""
    if preferred is None:
        return []
    return _try(lambda: replace_with_study(ctx, order.reference, order.display, preferred, reasons))


def _evidence_refs(assessment: AxSpaAssessment) -> list[str]:
    return [
        e.reference
        for c in (*assessment.entry, *assessment.nice)
        if c.state is State.MET
        for e in c.evidence
        if not e.reference.startswith("Patient/")
    ]


def _try(build: Callable[[], SuggestionSpec]) -> list[SuggestionSpec]:
    try:
        return [build()]
    except SuggestionBuildError:
        return []


def evaluate_imaging(
    facts: PatientFacts, record: PatientRecord, knowledge: Knowledge, hook: str, ctx: OrderContext
) -> list[Decision]:
    if hook not in ORDER_HOOKS:
        return []
    decisions = []
    for order in lumbar_imaging_orders(record, knowledge, hook):
        result = evaluate_order(order, facts, knowledge, ctx)
        if result is not None:
            decisions.append(result)
    return decisions
