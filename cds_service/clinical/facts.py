"""PatientFacts: everything the rules need, derived once per hook call from the PatientRecord.

Two passes keep large records fast: a cheap filter on the raw dicts (resourceType + code membership in
any value set of the product) and then FHIR validation with fhir.resources R4B of the few relevant
resources only. A resource that fails validation is skipped and listed in ``skipped`` -- never an
exception. Rules read the validated JSON (partial dates keep their precision).

Every fact carries its Evidence and a three-valued State: met / not met / not documented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from cds_service.clinical import labs
from cds_service.clinical.codes import SNOMED, V3_ROLE_CODE, describe_coding, iter_codings, normalize_system
from cds_service.clinical.dates import (
    DateSpan,
    add_months,
    add_years,
    completed_years,
    parse_fhir_date,
    today_of,
    within_last_days,
    within_last_months,
)
from cds_service.clinical.fhir_read import (
    age_in_years,
    condition_active,
    condition_clinical_span,
    condition_excluded,
    evidence_for,
    first_span,
    interpretation_codes,
    observation_excluded,
    observation_span,
    quantity,
    reference_of,
)
from cds_service.clinical.knowledge import Knowledge, ValueSet
from cds_service.clinical.medications import MedicationUse, medication_uses, merged_spans
from cds_service.clinical.model import Evidence, PatientRecord, State
from cds_service.clinical.questionnaire import QuestionnaireAnswers, is_our_questionnaire

CODED_TYPES = ("Condition", "Observation", "Procedure", "ServiceRequest", "DiagnosticReport")
_CODED_TYPE_SET = frozenset(CODED_TYPES)
ABSENT_VALUE_CODES = {(SNOMED, "2667000"), (SNOMED, "260385009"), (SNOMED, "373067005")}  # absent/negative/no
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
BACK_PAIN_VALUESETS = ("low-back-pain", "radicular-pain")


# ---------------------------------------------------------------------------------------------------
# Fact types
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """A three-valued fact with the data behind it."""

    state: State
    evidence: tuple[Evidence, ...] = ()
    note: str | None = None

    @property
    def met(self) -> bool:
        return self.state is State.MET


NOT_DOCUMENTED = Finding(State.NOT_DOCUMENTED)


def combine(*findings: Finding) -> Finding:
    """Any source that shows the fact wins; otherwise any explicit 'no'; otherwise not documented."""
    notes = "; ".join(dict.fromkeys(f.note for f in findings if f.note)) or None
    for state in (State.MET, State.NOT_MET):
        chosen = [f for f in findings if f.state is state]
        if chosen:
            evidence = tuple(e for f in chosen for e in f.evidence)
            chosen_notes = "; ".join(dict.fromkeys(f.note for f in chosen if f.note)) or None
            return Finding(state, evidence, chosen_notes if state is State.MET else notes)
    return Finding(State.NOT_DOCUMENTED, (), notes)


@dataclass(frozen=True)
class RedFlag:
    id: str
    category: str  # cauda-equina, neurological-deficit, malignancy, infection, fracture
    display: str
    finding: Finding


@dataclass(frozen=True)
class Episode:
    """The current back pain episode (from active LBP/radicular Conditions)."""

    conditions: tuple[Evidence, ...] = ()
    onset: date | None = None
    onset_source: str | None = None
    onset_evidence: Evidence | None = None
    onset_note: str | None = None
    duration_days: int | None = None
    onset_age: int | None = None

    @property
    def present(self) -> bool:
        return bool(self.conditions)

    @property
    def duration_weeks(self) -> int | None:
        return None if self.duration_days is None else self.duration_days // 7

    @property
    def onset_from_recorded_date(self) -> bool:
        return self.onset_source == "recordedDate"


@dataclass(frozen=True)
class PatientFacts:
    today: date
    patient_id: str
    birth_date: date | None
    age: int | None
    sex: str | None
    episode: Episode
    radicular: Finding
    red_flags: tuple[RedFlag, ...]
    conservative_care: Finding
    prior_imaging: tuple[Evidence, ...]
    crp: labs.LabResult
    crp_recent: bool
    hla_b27: labs.LabResult
    hla_b27_recent: bool
    symptoms: Mapping[str, Finding]
    axspa_diagnosis: tuple[Evidence, ...]
    rheumatology_referrals: tuple[Evidence, ...]
    back_pain_conditions: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # "Condition/x" -> json
    skipped: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    def met_red_flags(self) -> list[RedFlag]:
        return [flag for flag in self.red_flags if flag.finding.met]

    def symptom(self, key: str) -> Finding:
        return self.symptoms.get(key, NOT_DOCUMENTED)


# ---------------------------------------------------------------------------------------------------
# Pass 1: cheap relevance filter on raw dicts
# ---------------------------------------------------------------------------------------------------
def _list(value: Any) -> list[Any]:
    """An array element as a list; anything else (malformed input) as empty, never a crash."""
    return value if isinstance(value, list) else []


def _is_relevant(resource: dict[str, Any], knowledge: Knowledge) -> bool:
    rtype = resource.get("resourceType")
    if rtype in CODED_TYPES:
        return knowledge.is_known_code(resource.get("code"))
    if rtype == "QuestionnaireResponse":
        return is_our_questionnaire(resource.get("questionnaire"))
    if rtype == "MedicationRequest":
        concept = resource.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            texts = [concept.get("text")] + [c.get("display") for c in iter_codings(concept)]
            return knowledge.is_known_code(concept) or any(knowledge.is_known_medication_name(t) for t in texts)
        return isinstance(resource.get("medicationReference"), dict)
    if rtype == "ImagingStudy":
        if any(knowledge.is_known_code(c) for c in _list(resource.get("procedureCode"))):
            return True
        return any(
            knowledge.is_known_code({"coding": [s.get("bodySite")]})
            for s in _list(resource.get("series"))
            if isinstance(s, dict) and isinstance(s.get("bodySite"), dict)
        )
    if rtype == "FamilyMemberHistory":
        return any(
            knowledge.is_known_code(c.get("code")) for c in _list(resource.get("condition")) if isinstance(c, dict)
        )
    return False


def _validate(resource: dict[str, Any]) -> str | None:
    """None when the resource is valid FHIR R4B, else a short reason."""
    try:
        model = get_fhir_model_class(resource["resourceType"])
        model.model_validate(resource)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "skip and report"
        errors = getattr(exc, "errors", None)
        if callable(errors):
            try:
                first = errors()[0]
                loc = ".".join(str(p) for p in first.get("loc", ()))
                return f"{loc}: {first.get('msg', exc)}" if loc else str(first.get("msg", exc))
            except Exception:  # noqa: BLE001
                pass
        return str(exc).splitlines()[0][:200]
    return None


@dataclass
class _Sorted:
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    medications: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def of(self, rtype: str) -> list[dict[str, Any]]:
        return self.by_type.get(rtype, [])


def _sort_resources(resources: Iterable[Any], knowledge: Knowledge) -> _Sorted:
    result = _Sorted()
    raw_medications: dict[str, dict[str, Any]] = {}
    coded_types = _CODED_TYPE_SET
    is_known_code = knowledge.is_known_code
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        rtype = resource.get("resourceType")
        if rtype in coded_types:  # the bulk of a chart: _is_relevant's first branch, inlined
            if not is_known_code(resource.get("code")):
                continue
        elif rtype == "Medication" and isinstance(resource.get("id"), str):
            raw_medications[resource["id"]] = resource
            continue
        elif not _is_relevant(resource, knowledge):
            continue
        error = _validate(resource)
        if error:
            result.skipped.append(f"{reference_of(resource)}: {error}")
            continue
        result.by_type.setdefault(resource["resourceType"], []).append(resource)
    # Medications are validated only when a relevant MedicationRequest refers to them.
    for request in result.of("MedicationRequest"):
        ref = (request.get("medicationReference") or {}).get("reference")
        if isinstance(ref, str) and ref.split("/")[-1] in raw_medications:
            med = raw_medications[ref.split("/")[-1]]
            if med["id"] not in result.medications:
                error = _validate(med)
                if error:
                    result.skipped.append(f"{reference_of(med)}: {error}")
                else:
                    result.medications[med["id"]] = med
    return result


# ---------------------------------------------------------------------------------------------------
# Pass 2: facts
# ---------------------------------------------------------------------------------------------------
class _Builder:
    def __init__(self, record: PatientRecord, knowledge: Knowledge, now: datetime | date) -> None:
        self.k = knowledge
        self.t = knowledge.thresholds
        self.today = today_of(now)
        self.record = record
        self.sorted = _sort_resources(record.resources, knowledge)
        self.birth_date, self.sex = self._patient()
        self.age = completed_years(self.birth_date, self.today) if self.birth_date else None
        self.qr = QuestionnaireAnswers(self.sorted.of("QuestionnaireResponse"))
        self.conditions = [c for c in self.sorted.of("Condition") if not condition_excluded(c)]
        self.observations = [o for o in self.sorted.of("Observation") if not observation_excluded(o)]
        self.meds: list[MedicationUse] = medication_uses(
            self.sorted.of("MedicationRequest"), self.sorted.medications, knowledge, self.today
        )

    # -- patient --------------------------------------------------------------------------------
    def _patient(self) -> tuple[date | None, str | None]:
        patient = self.record.patient
        if not isinstance(patient, dict):
            return None, None
        error = _validate(patient) if patient.get("resourceType") == "Patient" else "not a Patient resource"
        if error:
            self.sorted.skipped.append(f"{reference_of(patient)}: {error}")
            return None, None
        span = parse_fhir_date(patient.get("birthDate"))
        # A partial birthDate ("1980") gives the latest plausible day: never overstate age.
        birth = span.latest if span else None
        gender = patient.get("gender")
        return birth, gender if isinstance(gender, str) else None

    # -- coded conditions / observations ----------------------------------------------------------
    def coded(
        self,
        vs_id: str,
        *,
        active_only: bool = True,
        window_days: int | None = None,
        require_date: bool = False,
    ) -> Finding:
        """Conditions and Observations coded in a value set.

        active_only: Conditions must be active (history of cancer etc. pass False). window_days: the
        datum must be dated within the last N days (undated active Conditions count unless require_date).
        Observations whose value says absent/negative/no give 'not met'.
        """
        vs = self.k.valueset(vs_id)
        met: list[Evidence] = []
        not_met: list[Evidence] = []
        notes: list[str] = []
        for cond in self.conditions:
            coding = _with_display(vs.match(cond.get("code")), vs)
            if coding is None or (active_only and not condition_active(cond)):
                continue
            span = condition_clinical_span(cond)
            if window_days is not None:
                if span is None and require_date:
                    notes.append(f"{reference_of(cond)} is undated")
                    continue
                if span is not None and not within_last_days(span, self.today, window_days):
                    continue
            met.append(evidence_for(cond, coding, span))
        for obs in self.observations:
            coding = _with_display(vs.match(obs.get("code")), vs)
            if coding is None:
                continue
            span = observation_span(obs)
            if window_days is not None and (span is None or not within_last_days(span, self.today, window_days)):
                continue
            if _observation_says_absent(obs):
                not_met.append(evidence_for(obs, coding, span, value="absent"))
            else:
                met.append(evidence_for(obs, coding, span))
        note = "; ".join(notes) or None
        if met:
            return Finding(State.MET, tuple(met), note)
        if not_met:
            return Finding(State.NOT_MET, tuple(not_met), note)
        return Finding(State.NOT_DOCUMENTED, (), note)

    def answer(self, link_id: str, text: str, window_days: int | None = None) -> Finding:
        state, evidence, note = self.qr.boolean(link_id, text)
        if state is State.MET and window_days is not None:
            answer = self.qr.get(link_id)
            if answer and answer.authored and not within_last_days(answer.authored, self.today, window_days):
                return Finding(
                    State.NOT_DOCUMENTED,
                    (),
                    f"questionnaire answer '{link_id}' is older than {window_days} days",
                )
        return Finding(state, (evidence,) if evidence else (), note)

    # -- episode --------------------------------------------------------------------------------
    def episode(self) -> tuple[Episode, dict[str, dict[str, Any]]]:
        evidence: list[Evidence] = []
        by_ref: dict[str, dict[str, Any]] = {}
        candidates: list[tuple[date, str, Evidence]] = []
        recorded: list[tuple[date, Evidence]] = []
        notes: list[str] = []
        for cond in self.conditions:
            coding = next(
                (
                    _with_display(c, self.k.valueset(vs_id))
                    for vs_id in BACK_PAIN_VALUESETS
                    if (c := self.k.match(vs_id, cond.get("code")))
                ),
                None,
            )
            if coding is None:
                continue
            by_ref[reference_of(cond)] = cond
            if not condition_active(cond):
                continue
            span, path = first_span(cond, "onsetDateTime", "onsetPeriod.start")
            ev = evidence_for(cond, coding, span)
            evidence.append(ev)
            if span and path:
                candidates.append((span.earliest, path, ev))
            years = age_in_years(cond.get("onsetAge"))
            if years is not None:
                if self.birth_date:
                    whole = int(years)
                    onset_day = add_years(self.birth_date, whole) + timedelta(days=int((years - whole) * 365.25))
                    candidates.append(
                        (
                            onset_day,
                            "onsetAge",
                            evidence_for(cond, coding, None, value=f"onset at age {years:g}"),
                        )
                    )
                else:
                    notes.append(f"{reference_of(cond)} has onsetAge but birthDate is missing")
            rec = parse_fhir_date(cond.get("recordedDate"))
            if rec:
                recorded.append((rec.earliest, evidence_for(cond, coding, rec)))
        q_span, q_answer, q_note = self.qr.date_value("pain-onset-date")
        if q_note:
            notes.append(q_note)
        if q_span and q_answer:
            candidates.append((q_span.earliest, "questionnaire", q_answer.evidence("Questionnaire: pain onset date")))
        onset = source = onset_ev = None
        if candidates:
            onset, source, onset_ev = min(candidates, key=lambda c: c[0])
        elif recorded:
            onset, onset_ev = min(recorded, key=lambda c: c[0])
            source = "recordedDate"
            notes.append("onset not recorded: the date the condition was recorded is used instead")
        duration = None
        onset_age = None
        if onset is not None:
            duration = (self.today - onset).days
            if duration < 0:
                notes.append("onset date lies in the future; duration set to 0")
                duration = 0
            if self.birth_date:
                onset_age = completed_years(self.birth_date, onset)
        return (
            Episode(tuple(evidence), onset, source, onset_ev, "; ".join(notes) or None, duration, onset_age),
            by_ref,
        )

    # -- red flags ------------------------------------------------------------------------------
    def red_flags(self) -> tuple[RedFlag, ...]:
        t = self.t
        flags = [
            RedFlag(
                "cauda-equina-syndrome",
                "cauda-equina",
                "Cauda equina syndrome",
                self.coded("cauda-equina-syndrome"),
            ),
            RedFlag("urinary-retention", "cauda-equina", "Urinary retention", self.coded("urinary-retention")),
            RedFlag(
                "incontinence",
                "cauda-equina",
                "New urinary or faecal incontinence",
                self.coded("incontinence", window_days=t.new_incontinence_window_days, require_date=True),
            ),
            RedFlag(
                "saddle-anaesthesia",
                "cauda-equina",
                "Saddle anaesthesia",
                combine(self.coded("saddle-anaesthesia"), self.answer("saddle-anaesthesia", "saddle anaesthesia")),
            ),
            RedFlag(
                "bladder-or-bowel-dysfunction",
                "cauda-equina",
                "New bladder or bowel dysfunction",
                self.answer("bladder-or-bowel-dysfunction", "bladder or bowel dysfunction"),
            ),
            RedFlag(
                "neurological-deficit",
                "neurological-deficit",
                "Neurological deficit (foot drop or leg weakness)",
                self.coded("neurological-deficit"),
            ),
            RedFlag(
                "progressive-leg-weakness",
                "neurological-deficit",
                "Progressive leg weakness",
                self.answer("progressive-leg-weakness", "progressive leg weakness"),
            ),
            RedFlag(
                "history-of-cancer",
                "malignancy",
                "History of cancer",
                combine(
                    self.coded("malignancy", active_only=False),
                    self.answer("history-of-cancer", "history of cancer"),
                ),
            ),
            RedFlag(
                "unexplained-weight-loss",
                "malignancy",
                "Unexplained weight loss",
                combine(
                    self.coded("weight-loss"),
                    self.answer("unexplained-weight-loss", "unexplained weight loss"),
                ),
            ),
            RedFlag("fever", "infection", "Fever", self._fever()),
            RedFlag(
                "iv-drug-use",
                "infection",
                "Intravenous drug use",
                combine(self.coded("iv-drug-use"), self.answer("iv-drug-use", "intravenous drug use")),
            ),
            RedFlag("immunosuppression", "infection", "Immunosuppression", self._immunosuppression()),
            RedFlag(
                "significant-trauma",
                "fracture",
                f"Significant trauma in the last {t.trauma_window_days} days",
                combine(
                    self.coded(
                        "significant-trauma",
                        active_only=False,
                        window_days=t.trauma_window_days,
                        require_date=True,
                    ),
                    self.answer("significant-trauma", "significant trauma", window_days=t.trauma_window_days),
                ),
            ),
            RedFlag("osteoporosis", "fracture", "Osteoporosis", self.coded("osteoporosis", active_only=False)),
            RedFlag(
                "long-term-steroids",
                "fracture",
                f"Systemic corticosteroids for {t.steroid_min_months} months or more",
                self._steroids(),
            ),
            RedFlag("age-70-or-over", "fracture", f"Age {t.fracture_risk_age_years} or over", self._age_flag()),
        ]
        return tuple(flags)

    def _fever(self) -> Finding:
        t = self.t
        coded = self.coded("fever", window_days=t.fever_window_days)
        vs = self.k.valueset("body-temperature")
        met: list[Evidence] = []
        normal: list[Evidence] = []
        notes: list[str] = []
        for obs in self.observations:
            if vs.match(obs.get("code")) is None:
                continue
            span = observation_span(obs)
            if span is None or not within_last_days(span, self.today, t.fever_window_days):
                continue
            q = quantity(obs.get("valueQuantity"))
            if q is None:
                notes.append(f"{reference_of(obs)}: temperature without a value")
                continue
            celsius = _to_celsius(*q)
            if celsius is None:
                notes.append(f"{reference_of(obs)}: unknown temperature unit {q[1]!r}")
                continue
            ev = evidence_for(obs, None, span, value=f"{q[0]:g} {q[1]}", text="Body temperature")
            (met if celsius >= t.fever_temperature_celsius else normal).append(ev)
        temp = (
            Finding(State.MET, tuple(met))
            if met
            else (Finding(State.NOT_MET, tuple(normal)) if normal else Finding(State.NOT_DOCUMENTED))
        )
        return combine(
            coded,
            temp,
            self.answer("fever", "fever", window_days=t.fever_window_days),
            Finding(State.NOT_DOCUMENTED, (), "; ".join(notes) or None),
        )

    def _immunosuppression(self) -> Finding:
        drugs = [
            u.evidence("current immunosuppressant")
            for u in self.meds
            if u.med_class == "immunosuppressant" and u.current
        ]
        return combine(
            self.coded("immunosuppression"),
            Finding(State.MET, tuple(drugs)) if drugs else NOT_DOCUMENTED,
            self.answer("immunosuppression", "immunosuppression"),
        )

    def _steroids(self) -> Finding:
        months = self.t.steroid_min_months
        steroid_uses = [u for u in self.meds if u.med_class == "systemic-corticosteroid"]
        course = NOT_DOCUMENTED
        if steroid_uses:
            long = [(s, e, m) for s, e, m in merged_spans(steroid_uses) if add_months(s, months) <= e]
            if long:
                s, e, members = long[0]
                course = Finding(State.MET, tuple(u.evidence(f"{s.isoformat()} to {e.isoformat()}") for u in members))
            elif any(u.start and u.end for u in steroid_uses):
                course = Finding(
                    State.NOT_MET,
                    tuple(u.evidence() for u in steroid_uses),
                    f"systemic corticosteroids documented for less than {months} months",
                )
            else:
                course = Finding(
                    State.NOT_DOCUMENTED,
                    tuple(u.evidence() for u in steroid_uses),
                    "systemic corticosteroid duration cannot be determined",
                )
        return combine(
            self.coded("long-term-steroid-use"),
            course,
            self.answer("long-term-steroids", "long-term steroid use"),
        )

    def _age_flag(self) -> Finding:
        if self.age is None:
            return Finding(State.NOT_DOCUMENTED, (), "birth date not documented")
        patient = self.record.patient or {}
        ev = Evidence(reference_of(patient), "Age", patient.get("birthDate"), f"{self.age} years")
        state = State.MET if self.age >= self.t.fracture_risk_age_years else State.NOT_MET
        return Finding(state, (ev,))

    # -- symptoms (axSpA) ------------------------------------------------------------------------
    def symptoms(self) -> dict[str, Finding]:
        any_status = {"active_only": False}
        return {
            "buttock-pain": combine(
                self.coded("buttock-pain"),
                self.answer("buttock-pain", "buttock pain"),
                _only_met(self.answer("alternating-buttock-pain", "alternating buttock pain")),
            ),
            "night-waking": self.answer("night-waking-second-half", "waking in the second half of the night"),
            "improves-with-movement": self.answer("improves-with-movement", "improves with movement"),
            "nsaid-response": self.answer("nsaid-response-within-48h", "improvement within 48 hours of NSAIDs"),
            "family-history": self._family_history(),
            "arthritis": self.coded("arthritis", **any_status),
            "enthesitis": self.coded("enthesitis", **any_status),
            "psoriasis": self.coded("psoriasis", **any_status),
            "uveitis": self.coded("uveitis", **any_status),
            "inflammatory-bowel-disease": self.coded("inflammatory-bowel-disease", **any_status),
            "dactylitis": self.coded("dactylitis", **any_status),
            "sacroiliitis": self.coded("sacroiliitis", **any_status),
            "morning-stiffness": combine(
                self.coded("morning-stiffness"),
                self.answer("morning-stiffness-over-30-min", "morning stiffness over 30 minutes"),
            ),
            "insidious-onset": self.answer("insidious-onset", "insidious onset"),
            "no-improvement-with-rest": self.answer("no-improvement-with-rest", "no improvement with rest"),
            "leg-pain-below-knee": self.answer("leg-pain-below-knee", "leg pain below the knee"),
        }

    def _family_history(self) -> Finding:
        vs = self.k.valueset("spondyloarthritis-family")
        met: list[Evidence] = []
        notes: list[str] = []
        for fmh in self.sorted.of("FamilyMemberHistory"):
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
    def conservative_care(self) -> Finding:
        cutoff = self.today - timedelta(days=7 * self.t.conservative_care_min_weeks)
        physio = self.k.valueset("physiotherapy")
        old: list[Evidence] = []
        recent: list[Evidence] = []
        for req in self.sorted.of("ServiceRequest"):
            coding = physio.match(req.get("code"))
            if coding is None or req.get("status") not in ("active", "completed", "on-hold"):
                continue
            span = first_span(req, "occurrenceDateTime", "occurrencePeriod.start", "authoredOn")[0]
            if span:
                (old if span.earliest <= cutoff else recent).append(evidence_for(req, coding, span))
        for proc in self.sorted.of("Procedure"):
            coding = physio.match(proc.get("code"))
            if coding is None or proc.get("status") not in ("completed", "in-progress"):
                continue
            span = first_span(proc, "performedDateTime", "performedPeriod.start")[0]
            if span:
                (old if span.earliest <= cutoff else recent).append(evidence_for(proc, coding, span))
        for use in self.meds:
            if use.med_class == "nsaid-analgesic" and use.start:
                (old if use.start <= cutoff else recent).append(use.evidence("NSAID/analgesic"))
        weeks = self.t.conservative_care_min_weeks
        if old:
            return Finding(State.MET, tuple(old))
        if recent:
            return Finding(State.NOT_MET, tuple(recent), f"conservative care began less than {weeks} weeks ago")
        return Finding(State.NOT_DOCUMENTED, (), "no physiotherapy or NSAID/analgesic course documented")

    def prior_imaging(self) -> tuple[Evidence, ...]:
        months = self.t.prior_imaging_window_months
        lumbar = self.k.valueset("lumbar-imaging")
        site = self.k.valueset("lumbar-spine-body-site")
        found: list[tuple[date, Evidence]] = []

        def keep(
            resource: dict[str, Any],
            coding: dict[str, Any] | None,
            span: DateSpan | None,
            text: str | None = None,
        ):
            if span and within_last_months(span, self.today, months):
                found.append((span.latest, evidence_for(resource, coding, span, text=text)))

        for study in self.sorted.of("ImagingStudy"):
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
        for proc in self.sorted.of("Procedure"):
            coding = lumbar.match(proc.get("code"))
            if coding and proc.get("status") in ("completed", "in-progress"):
                keep(proc, coding, first_span(proc, "performedDateTime", "performedPeriod.start")[0])
        for report in self.sorted.of("DiagnosticReport"):
            coding = lumbar.match(report.get("code"))
            if coding and report.get("status") not in ("cancelled", "entered-in-error", "registered"):
                keep(
                    report,
                    coding,
                    first_span(report, "effectiveDateTime", "effectivePeriod.start", "issued")[0],
                )
        found.sort(key=lambda pair: pair[0], reverse=True)
        return tuple(ev for _, ev in found)

    def lab_results(self) -> tuple[labs.LabResult, bool, labs.LabResult, bool]:
        crp_vs, hla_vs = self.k.valueset("crp"), self.k.valueset("hla-b27")
        crp_results = [
            labs.interpret_crp(o, self.t.crp_upper_limit_mg_per_l)
            for o in self.observations
            if crp_vs.match(o.get("code"))
        ]
        hla_results = [labs.interpret_hla_b27(o) for o in self.observations if hla_vs.match(o.get("code"))]
        today, crp_months, hla_months = self.today, self.t.crp_lookback_months, self.t.hla_b27_lookback_months
        return (
            labs.most_recent(crp_results),
            labs.has_recent_readable(crp_results, today, crp_months),
            labs.most_recent(hla_results),
            labs.has_recent_readable(hla_results, today, hla_months),
        )

    def axspa_diagnosis(self) -> tuple[Evidence, ...]:
        return self.coded("axspa-diagnosis", active_only=False).evidence

    def rheumatology_referrals(self) -> tuple[Evidence, ...]:
        vs = self.k.valueset("rheumatology-referral")
        found = []
        for req in self.sorted.of("ServiceRequest"):
            coding = vs.match(req.get("code"))
            if coding is None or req.get("status") not in ("active", "completed", "on-hold"):
                continue
            span = first_span(req, "authoredOn", "occurrenceDateTime", "occurrencePeriod.start")[0]
            if span and within_last_months(span, self.today, self.t.rheumatology_referral_window_months):
                found.append(evidence_for(req, coding, span, value=req.get("status")))
        return tuple(found)

    def radicular(self, symptoms: Mapping[str, Finding]) -> Finding:
        return combine(self.coded("radicular-pain"), _only_met(symptoms["leg-pain-below-knee"]))

    def build(self) -> PatientFacts:
        episode, by_ref = self.episode()
        symptoms = self.symptoms()
        crp, crp_recent, hla, hla_recent = self.lab_results()
        return PatientFacts(
            today=self.today,
            patient_id=self.record.patient_id,
            birth_date=self.birth_date,
            age=self.age,
            sex=self.sex,
            episode=episode,
            radicular=self.radicular(symptoms),
            red_flags=self.red_flags(),
            conservative_care=self.conservative_care(),
            prior_imaging=self.prior_imaging(),
            crp=crp,
            crp_recent=crp_recent,
            hla_b27=hla,
            hla_b27_recent=hla_recent,
            symptoms=symptoms,
            axspa_diagnosis=self.axspa_diagnosis(),
            rheumatology_referrals=self.rheumatology_referrals(),
            back_pain_conditions=by_ref,
            skipped=tuple(self.sorted.skipped),
            missing=tuple(self.record.missing),
        )


def _observation_says_absent(obs: dict[str, Any]) -> bool:
    if obs.get("valueBoolean") is False:
        return True
    for coding in iter_codings(obs.get("valueCodeableConcept")):
        if (normalize_system(coding.get("system")), str(coding.get("code", ""))) in ABSENT_VALUE_CODES:
            return True
    return "NEG" in interpretation_codes(obs)


def _with_display(coding: dict[str, Any] | None, vs: ValueSet) -> dict[str, Any] | None:
    """The coding, with the value set's display filled in when the EHR sent none (for evidence text)."""
    if coding is None or coding.get("display"):
        return coding
    display = vs.display(coding.get("system"), coding.get("code"))
    return {**coding, "display": display} if display else coding


def _only_met(finding: Finding) -> Finding:
    """Keep a supporting source only when it shows the fact (its 'no' must not mask another source)."""
    return finding if finding.met else NOT_DOCUMENTED


def _to_celsius(value: float, unit: str | None) -> float | None:
    u = (unit or "").strip().lower().replace("°", "").replace("deg", "")
    if u in ("cel", "c"):
        return round(value, 2)
    if u in ("[f]", "f"):
        return round((value - 32) * 5 / 9, 2)
    return None


def build_facts(record: PatientRecord, knowledge: Knowledge, now: datetime | date) -> PatientFacts:
    """Derive PatientFacts from a PatientRecord at evaluation time ``now`` (never reads the clock)."""
    return _Builder(record, knowledge, now).build()


def order_back_pain_reason(order: dict[str, Any], knowledge: Knowledge, facts: PatientFacts) -> Evidence | None:
    """Evidence that a draft order is for back pain: reasonCode in the LBP value sets, or reasonReference
    to a back pain Condition on record."""
    for concept in order.get("reasonCode") or []:
        for vs_id in BACK_PAIN_VALUESETS:
            coding = knowledge.match(vs_id, concept)
            if coding:
                return Evidence(reference_of(order), f"Order reason: {describe_coding(coding)}")
    for ref in order.get("reasonReference") or []:
        target = (ref or {}).get("reference")
        if isinstance(target, str):
            key = "/".join(target.split("/")[-2:])
            if key in facts.back_pain_conditions:
                return Evidence(reference_of(order), f"Order reason: {key}")
    return None


__all__ = [
    "Finding",
    "RedFlag",
    "Episode",
    "PatientFacts",
    "build_facts",
    "combine",
    "order_back_pain_reason",
]
