"""Facts beyond red flags: axSpA symptoms, family history, conservative care, prior imaging, labs,
axSpA diagnosis and rheumatology referrals (spec sections 1 and 3)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from cds_service.clinical import labs
from cds_service.clinical.codes import V3_ROLE_CODE, iter_codings, normalize_system
from cds_service.clinical.dates import DateSpan, parse_fhir_date, within_last_months
from cds_service.clinical.facts.model import Finding, combine, only_met
from cds_service.clinical.fhir_read import evidence_for, first_span, reference_of
from cds_service.clinical.model import Evidence, State

if TYPE_CHECKING:
    from cds_service.clinical.facts.builder import Builder

FIRST_DEGREE = frozenset(
    {
        "FTH",
        "MTH",
        "PRN",
        "NPRN",
        "NFTH",
        "NMTH",
        "SIB",
        "NSIB",
        "BRO",
        "SIS",
        "NBRO",
        "NSIS",
        "TWIN",
        "TWINBRO",
        "TWINSIS",
        "FTWIN",
        "FTWINBRO",
        "FTWINSIS",
        "ITWIN",
        "ITWINBRO",
        "ITWINSIS",
        "CHILD",
        "NCHILD",
        "SON",
        "DAU",
        "SONC",
        "DAUC",
    }
)


def symptoms(b: Builder) -> dict[str, Finding]:
    any_status = {"active_only": False}
    return {
        "buttock-pain": combine(
            b.coded("buttock-pain"),
            b.answer("buttock-pain", "buttock pain"),
            only_met(b.answer("alternating-buttock-pain", "alternating buttock pain")),
        ),
        "night-waking": b.answer("night-waking-second-half", "waking in the second half of the night"),
        "improves-with-movement": b.answer("improves-with-movement", "improves with movement"),
        "nsaid-response": b.answer("nsaid-response-within-48h", "improvement within 48 hours of NSAIDs"),
        "family-history": family_history(b),
        "arthritis": b.coded("arthritis", **any_status),
        "enthesitis": b.coded("enthesitis", **any_status),
        "psoriasis": b.coded("psoriasis", **any_status),
        "uveitis": b.coded("uveitis", **any_status),
        "inflammatory-bowel-disease": b.coded("inflammatory-bowel-disease", **any_status),
        "dactylitis": b.coded("dactylitis", **any_status),
        "sacroiliitis": b.coded("sacroiliitis", **any_status),
        "morning-stiffness": combine(
            b.coded("morning-stiffness"),
            b.answer("morning-stiffness-over-30-min", "morning stiffness over 30 minutes"),
        ),
        "insidious-onset": b.answer("insidious-onset", "insidious onset"),
        "no-improvement-with-rest": b.answer("no-improvement-with-rest", "no improvement with rest"),
        "leg-pain-below-knee": b.answer("leg-pain-below-knee", "leg pain below the knee"),
    }


def family_history(b: Builder) -> Finding:
    vs = b.k.valueset("spondyloarthritis-family")
    met: list[Evidence] = []
    notes: list[str] = []
    for fmh in b.sorted.of("FamilyMemberHistory"):
        if fmh.get("status") == "entered-in-error":
            continue
        for cond in fmh.get("condition") or []:
            coding = vs.match((cond or {}).get("code"))
            if coding is None:
                continue
            relation = {
                str(c.get("code", "")).upper()
                for c in iter_codings(fmh.get("relationship"))
                if normalize_system(c.get("system")) in (V3_ROLE_CODE, "")
            }
            if relation & FIRST_DEGREE:
                rel = sorted(relation & FIRST_DEGREE)[0]
                met.append(evidence_for(fmh, coding, None, value=f"relationship {rel}"))
            else:
                notes.append(f"{reference_of(fmh)}: relative is not first-degree or relationship not coded")
    if met:
        return Finding(State.MET, tuple(met))
    return Finding(State.NOT_DOCUMENTED, (), "; ".join(notes) or None)


# -- care, imaging, referrals -----------------------------------------------------------------


def conservative_care(b: Builder) -> Finding:
    cutoff = b.today - timedelta(days=7 * b.t.conservative_care_min_weeks)
    physio = b.k.valueset("physiotherapy")
    old: list[Evidence] = []
    recent: list[Evidence] = []
    for req in b.sorted.of("ServiceRequest"):
        coding = physio.match(req.get("code"))
        if coding is None or req.get("status") not in ("active", "completed", "on-hold"):
            continue
        span = first_span(req, "occurrenceDateTime", "occurrencePeriod.start", "authoredOn")[0]
        if span:
            (old if span.earliest <= cutoff else recent).append(evidence_for(req, coding, span))
    for proc in b.sorted.of("Procedure"):
        coding = physio.match(proc.get("code"))
        if coding is None or proc.get("status") not in ("completed", "in-progress"):
            continue
        span = first_span(proc, "performedDateTime", "performedPeriod.start")[0]
        if span:
            (old if span.earliest <= cutoff else recent).append(evidence_for(proc, coding, span))
    for use in b.meds:
        if use.med_class == "nsaid-analgesic" and use.start:
            (old if use.start <= cutoff else recent).append(use.evidence("NSAID/analgesic"))
    weeks = b.t.conservative_care_min_weeks
    if old:
        return Finding(State.MET, tuple(old))
    if recent:
        return Finding(State.NOT_MET, tuple(recent), f"conservative care began less than {weeks} weeks ago")
    return Finding(State.NOT_DOCUMENTED, (), "no physiotherapy or NSAID/analgesic course documented")


def prior_imaging(b: Builder) -> tuple[Evidence, ...]:
    months = b.t.prior_imaging_window_months
    lumbar = b.k.valueset("lumbar-imaging")
    site = b.k.valueset("lumbar-spine-body-site")
    found: list[tuple[date, Evidence]] = []

    def keep(
        resource: dict[str, Any],
        coding: dict[str, Any] | None,
        span: DateSpan | None,
        text: str | None = None,
    ):
        if span and within_last_months(span, b.today, months):
            found.append((span.latest, evidence_for(resource, coding, span, text=text)))

    for study in b.sorted.of("ImagingStudy"):
        if study.get("status") in ("cancelled", "entered-in-error"):
            continue
        coding = next((c for pc in study.get("procedureCode") or [] if (c := lumbar.match(pc))), None)
        body = next(
            (
                s["bodySite"]
                for s in study.get("series") or []
                if isinstance(s, dict)
                and site.contains((s.get("bodySite") or {}).get("system"), (s.get("bodySite") or {}).get("code"))
            ),
            None,
        )
        if coding or body:
            span = first_span(study, "started")[0] or next(
                (sp for s in study.get("series") or [] if (sp := parse_fhir_date((s or {}).get("started")))),
                None,
            )
            keep(study, coding, span, None if coding else "Imaging study of the lumbar spine")
    for proc in b.sorted.of("Procedure"):
        coding = lumbar.match(proc.get("code"))
        if coding and proc.get("status") in ("completed", "in-progress"):
            keep(proc, coding, first_span(proc, "performedDateTime", "performedPeriod.start")[0])
    for report in b.sorted.of("DiagnosticReport"):
        coding = lumbar.match(report.get("code"))
        if coding and report.get("status") not in ("cancelled", "entered-in-error", "registered"):
            keep(
                report,
                coding,
                first_span(report, "effectiveDateTime", "effectivePeriod.start", "issued")[0],
            )
    found.sort(key=lambda pair: pair[0], reverse=True)
    return tuple(ev for _, ev in found)


def lab_results(b: Builder) -> tuple[labs.LabResult, bool, labs.LabResult, bool]:
    """Most recent CRP and HLA-B27, and whether each has a readable result recent enough not to re-order.

    (rev 2) hs-CRP (value set crp-high-sensitivity) is judged against the mg/L threshold only. HLA-B27 is a
    genotype: only final/amended/corrected results count, and a valid result of any age counts (never
    re-ordered)."""
    crp_vs, hs_vs, hla_vs = b.k.valueset("crp"), b.k.valueset("crp-high-sensitivity"), b.k.valueset("hla-b27")
    crp_results = [
        labs.interpret_crp(o, b.t.crp_upper_limit_mg_per_l, high_sensitivity=hs_vs.match(o.get("code")) is not None)
        for o in b.observations
        if crp_vs.match(o.get("code"))
    ]
    hla_results = [
        labs.interpret_hla_b27(o)
        for o in b.observations
        if hla_vs.match(o.get("code")) and o.get("status") in labs.HLA_B27_STATUSES
    ]
    return (
        labs.most_recent(crp_results),
        labs.has_recent_readable(crp_results, b.today, b.t.crp_lookback_months),
        labs.most_recent(hla_results),
        any(r.state != labs.NOT_DOCUMENTED for r in hla_results),
    )


def axspa_diagnosis(b: Builder) -> tuple[Evidence, ...]:
    return b.coded("axspa-diagnosis", active_only=False).evidence


def rheumatology_referrals(b: Builder) -> tuple[Evidence, ...]:
    vs = b.k.valueset("rheumatology-referral")
    found = []
    for req in b.sorted.of("ServiceRequest"):
        coding = vs.match(req.get("code"))
        if coding is None or req.get("status") not in ("active", "completed", "on-hold"):
            continue
        span = first_span(req, "authoredOn", "occurrenceDateTime", "occurrencePeriod.start")[0]
        if span and within_last_months(span, b.today, b.t.rheumatology_referral_window_months):
            found.append(evidence_for(req, coding, span, value=req.get("status")))
    return tuple(found)


def radicular(b: Builder, symptoms: Mapping[str, Finding]) -> Finding:
    return combine(b.coded("radicular-pain"), only_met(symptoms["leg-pain-below-knee"]))
