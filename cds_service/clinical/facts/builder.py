"""Pass 2 of fact building: PatientFacts from the relevant, validated resources (see triage.py).

The builder holds what every fact needs (today in the site's zone, birth date range, questionnaire
answers, medication uses) and the two generic lookups (``coded``, ``answer``); the facts themselves are
in episode.py, red_flag_findings.py (driven by red_flag_catalogue.py) and history.py.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from cds_service.clinical.dates import completed_years, parse_fhir_date, site_zone, today_of, within_last_days, zone_of
from cds_service.clinical.facts import history
from cds_service.clinical.facts.episode import build_episode
from cds_service.clinical.facts.model import Finding, PatientFacts, RedFlag, combine
from cds_service.clinical.facts.red_flag_catalogue import RED_FLAGS, RedFlagSpec
from cds_service.clinical.facts.red_flag_findings import SPECIAL
from cds_service.clinical.facts.triage import sort_resources
from cds_service.clinical.facts.validation import validate
from cds_service.clinical.fhir_read import (
    condition_active,
    condition_clinical_span,
    condition_excluded,
    evidence_for,
    observation_excluded,
    observation_says_absent,
    observation_span,
    reference_of,
    with_display,
)
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.medications import MedicationUse, medication_uses
from cds_service.clinical.model import Evidence, PatientRecord, State
from cds_service.clinical.questionnaire import QuestionnaireAnswers


class Builder:
    def __init__(self, record: PatientRecord, knowledge: Knowledge, now: datetime | date) -> None:
        self.k = knowledge
        self.t = knowledge.thresholds
        self.today = today_of(now)
        self.record = record
        self.sorted = sort_resources(record.resources, knowledge)
        self.birth_earliest: date | None = None
        self.birth_latest: date | None = None
        self.birth_text: str | None = None
        self.sex = self._patient()
        self.age_range: tuple[int, int] | None = None
        if self.birth_latest and self.birth_earliest:
            self.age_range = (
                completed_years(self.birth_latest, self.today),
                completed_years(self.birth_earliest, self.today),
            )
        self.age = self.age_range[0] if self.age_range and self.age_range[0] == self.age_range[1] else None
        self.qr = QuestionnaireAnswers(self.sorted.of("QuestionnaireResponse"))
        self.conditions = [c for c in self.sorted.of("Condition") if not condition_excluded(c)]
        self.observations = [o for o in self.sorted.of("Observation") if not observation_excluded(o)]
        # the value sets each Condition's and Observation's code belongs to, found once (see coded())
        self._sets_of: dict[int, frozenset[str]] = {
            id(r): knowledge.valuesets_matching(r.get("code")) for r in (*self.conditions, *self.observations)
        }
        self.meds: list[MedicationUse] = medication_uses(
            [*self.sorted.of("MedicationRequest"), *self.sorted.of("MedicationStatement")],
            self.sorted.medications,
            knowledge,
            self.today,
        )

    def _patient(self) -> str | None:
        """Reads birthDate as a range of days (a partial "1955" or "1955-06" gives an age range) and gender."""
        patient = self.record.patient
        if not isinstance(patient, dict):
            return None
        error = validate(patient) if patient.get("resourceType") == "Patient" else "not a Patient resource"
        if error:
            self.sorted.skipped.append(f"{reference_of(patient)}: {error}")
            return None
        span = parse_fhir_date(patient.get("birthDate"))
        if span and span.earliest > self.today:  # impossible data: read as no birth date, and say so
            self.sorted.skipped.append(f"{reference_of(patient)}: birthDate {span.text} is after today")
            span = None
        if span:
            self.birth_earliest, self.birth_latest, self.birth_text = span.earliest, span.latest, span.text
        gender = patient.get("gender")
        return gender if isinstance(gender, str) else None

    # -- generic lookups ------------------------------------------------------------------------------
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
        sets_of = self._sets_of
        for cond in self.conditions:
            sets = sets_of.get(id(cond))
            if sets is not None and vs_id not in sets:  # match() would find nothing: skip it
                continue
            coding = with_display(vs.match(cond.get("code")), vs)
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
            sets = sets_of.get(id(obs))
            if sets is not None and vs_id not in sets:
                continue
            coding = with_display(vs.match(obs.get("code")), vs)
            if coding is None:
                continue
            span = observation_span(obs)
            if window_days is not None and (span is None or not within_last_days(span, self.today, window_days)):
                continue
            if observation_says_absent(obs):
                not_met.append(evidence_for(obs, coding, span, value="absent"))
            else:
                met.append(evidence_for(obs, coding, span))
        note = "; ".join(notes) or None
        if met:
            return Finding(State.MET, tuple(met), note)
        if not_met:
            return Finding(State.NOT_MET, tuple(not_met), note)
        return Finding(State.NOT_DOCUMENTED, (), note)

    def answer(self, link_id: str, text: str | None = None, window_days: int | None = None) -> Finding:
        """A boolean Questionnaire answer; with window_days an older "yes" is not documented (not "no")."""
        state, evidence, note = self.qr.boolean(link_id, text or link_id.replace("-", " "))
        if state is State.MET and window_days is not None:
            answer = self.qr.get(link_id)
            if answer and answer.authored and not within_last_days(answer.authored, self.today, window_days):
                return Finding(
                    State.NOT_DOCUMENTED,
                    (),
                    f"questionnaire answer '{link_id}' is older than {window_days} days",
                )
        return Finding(state, (evidence,) if evidence else (), note)

    # -- red flags (catalogue as data) ------------------------------------------------------------------
    def red_flag(self, spec: RedFlagSpec) -> RedFlag:
        sources: list[Finding] = []
        if spec.coded:
            c = spec.coded
            window = getattr(self.t, c.window) if c.window else None
            sources.append(
                self.coded(c.valueset, active_only=c.active_only, window_days=window, require_date=c.require_date)
            )
        if spec.question:
            q = spec.question
            sources.append(self.answer(q.link_id, window_days=getattr(self.t, q.window) if q.window else None))
        if spec.special:
            sources.append(SPECIAL[spec.special](self))
        params: dict[str, Any] = {name: getattr(self.t, threshold) for name, threshold in spec.label_params.items()}
        return RedFlag(spec.id, spec.category, combine(*sources) if len(sources) > 1 else sources[0], params)

    def build(self) -> PatientFacts:
        episode, by_ref = build_episode(self)
        symptoms = history.symptoms(self)
        crp, crp_recent, hla, hla_recent = history.lab_results(self)
        return PatientFacts(
            today=self.today,
            patient_id=self.record.patient_id,
            birth_date=self.birth_latest,
            age=self.age,
            sex=self.sex,
            episode=episode,
            radicular=history.radicular(self, symptoms),
            red_flags=tuple(self.red_flag(spec) for spec in RED_FLAGS),
            conservative_care=history.conservative_care(self),
            prior_imaging=history.prior_imaging(self),
            crp=crp,
            crp_recent=crp_recent,
            hla_b27=hla,
            hla_b27_recent=hla_recent,
            symptoms=symptoms,
            axspa_diagnosis=history.axspa_diagnosis(self),
            rheumatology_referrals=history.rheumatology_referrals(self),
            back_pain_conditions=by_ref,
            skipped=tuple(self.sorted.skipped),
            missing=tuple(self.record.missing),
            age_range=self.age_range,
            birth_date_earliest=self.birth_earliest,
        )


def build_facts(record: PatientRecord, knowledge: Knowledge, now: datetime | date) -> PatientFacts:
    """Derive PatientFacts from a PatientRecord at evaluation time ``now`` (never reads the clock)."""
    with site_zone(zone_of(now)):
        return Builder(record, knowledge, now).build()
