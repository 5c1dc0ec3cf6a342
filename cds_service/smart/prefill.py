"""What the record already shows, as pre-filled answers ("from the record").

The app reads the patient's record with the launch's access token (the same searches as the
patient-view prefetch, limited to what its scopes allow), builds the clinical facts with
`cds_service.clinical.build_facts` (the rules' own reading of the data: value sets, questionnaire
answers, observations), and maps facts to items through questionnaire-map.yaml. Met -> yes, not
met -> no, not documented -> left blank. Nothing read is stored.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from cds_service.clinical import build_facts
from cds_service.clinical.facts import Finding, PatientFacts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import PatientRecord, State
from cds_service.fhir_client import FetchResult, FhirClient
from cds_service.registry import prefetch_templates

from .form import Prefill
from .links import questionnaire_map

# Prefetch keys the app's scopes cover. QuestionnaireResponses are searched by patient only and
# filtered by canonical in cds_service.clinical, so responses naming a version are found on servers
# that match canonicals exactly.
READ_KEYS = ("conditions", "temperatures", "findings", "medications")


def queries(patient_id: str, knowledge: Knowledge) -> dict[str, str]:
    templates = prefetch_templates(knowledge)
    out = {key: templates[key].replace("{{context.patientId}}", patient_id) for key in READ_KEYS}
    out["patient"] = f"Patient/{patient_id}"
    out["questionnaireResponses"] = f"QuestionnaireResponse?patient={patient_id}"
    return out


def read_record(
    fhir: FhirClient,
    iss: str,
    token: str,
    patient_id: str,
    knowledge: Knowledge,
    allowlist: tuple[str, ...],
    seconds: float,
) -> tuple[PatientRecord, list[FetchResult]]:
    """The record as the rules see it, plus the searches that failed (their keys and reasons only)."""
    results = fhir.fetch_all(iss, token, queries(patient_id, knowledge), time.monotonic() + seconds, allowlist)
    resources: list[dict[str, Any]] = []
    patient = None
    for result in results.values():
        for resource in result.resources:
            if resource.get("resourceType") == "Patient":
                patient = resource
            else:
                resources.append(resource)
    failed = [r for r in results.values() if not r.ok]
    record = PatientRecord(
        patient_id=patient_id, patient=patient, resources=tuple(resources), missing=tuple(r.key for r in failed)
    )
    return record, failed


def _finding(facts: PatientFacts, source: str) -> Finding | None:
    kind, _, key = source.partition(":")
    if kind == "symptom":
        return facts.symptom(key)
    if kind == "red-flag":
        return next((flag.finding for flag in facts.red_flags if flag.id == key), None)
    return None


def _words(finding: Finding) -> str:
    parts = []
    for evidence in finding.evidence[:2]:
        text = evidence.text + (f" ({evidence.date})" if evidence.date else "")
        parts.append(text)
    return "; ".join(parts) or (finding.note or "recorded")


def prefill_from_facts(facts: PatientFacts) -> dict[str, Prefill]:
    out: dict[str, Prefill] = {}
    for link_id, source in questionnaire_map()["prefill"].items():
        if source == "episode:onset":
            episode = facts.episode
            if episode.onset is not None and not episode.onset_from_recorded_date:
                evidence = episode.onset_evidence
                out[link_id] = Prefill(episode.onset.isoformat(), evidence.text if evidence else "episode onset")
            continue
        finding = _finding(facts, source)
        if finding is None or finding.state is State.NOT_DOCUMENTED:
            continue
        out[link_id] = Prefill("true" if finding.state is State.MET else "false", _words(finding))
    return out


def prefill(record: PatientRecord, knowledge: Knowledge, now: datetime) -> dict[str, Prefill]:
    return prefill_from_facts(build_facts(record, knowledge, now))
