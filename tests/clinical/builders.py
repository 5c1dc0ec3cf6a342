"""Small builders for FHIR test data (valid R4 JSON), so tests state only what matters to them."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cds_service.clinical.model import EvaluationInput, PatientRecord

SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
QUESTIONNAIRE = "http://example.org/fhir/lbp-cds/Questionnaire/back-pain-assessment"

NOW = datetime(2025, 6, 15, 10, 30, tzinfo=UTC)
TODAY = NOW.date()
PATIENT_ID = "p1"

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def days_ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def years_ago(years: int, days: int = 0) -> str:
    """The date `years` calendar years before today, minus `days` more days."""
    day = TODAY.replace(year=TODAY.year - years) - timedelta(days=days)
    return day.isoformat()


def cc(code: str, system: str = SNOMED, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def patient(birth: str | None = "1990-01-01", gender: str = "male", pid: str = PATIENT_ID) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid, "gender": gender}
    if birth is not None:
        res["birthDate"] = birth
    return res


def age_birth(age_years: int, extra_days: int = 0) -> str:
    """birthDate for a patient exactly `age_years` old today (plus extra_days older)."""
    return years_ago(age_years, extra_days)


def condition(
    code: str,
    system: str = SNOMED,
    *,
    onset: str | None = None,
    recorded: str | None = None,
    clinical: str | None = "active",
    verification: str | None = None,
    onset_period: str | None = None,
    onset_age: float | None = None,
    display: str | None = None,
    rid: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": rid or new_id("cond"),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": cc(code, system, display),
    }
    if clinical:
        res["clinicalStatus"] = cc(clinical, "http://terminology.hl7.org/CodeSystem/condition-clinical")
    if verification:
        res["verificationStatus"] = cc(verification, "http://terminology.hl7.org/CodeSystem/condition-ver-status")
    if onset:
        res["onsetDateTime"] = onset
    if onset_period:
        res["onsetPeriod"] = {"start": onset_period}
    if onset_age is not None:
        res["onsetAge"] = {"value": onset_age, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}
    if recorded:
        res["recordedDate"] = recorded
    return res


def lbp(onset_days_ago: int | None = 100, **kw: Any) -> dict[str, Any]:
    """An active low back pain Condition with onset N days ago."""
    if onset_days_ago is not None:
        kw.setdefault("onset", days_ago(onset_days_ago))
    return condition("279039007", display="Low back pain", **kw)


def observation(
    code: str,
    system: str = LOINC,
    *,
    effective: str | None = None,
    status: str = "final",
    quantity: tuple[float, str] | None = None,
    value_string: str | None = None,
    value_cc: tuple[str, str] | None = None,
    value_bool: bool | None = None,
    interpretation: str | None = None,
    ref_high: tuple[float, str | None] | None = None,
    rid: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid or new_id("obs"),
        "status": status,
        "code": cc(code, system),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    if effective:
        res["effectiveDateTime"] = effective
    if quantity:
        value, unit = quantity
        res["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if value_string is not None:
        res["valueString"] = value_string
    if value_cc:
        res["valueCodeableConcept"] = cc(value_cc[1], value_cc[0])
    if value_bool is not None:
        res["valueBoolean"] = value_bool
    if interpretation:
        res["interpretation"] = [
            cc(interpretation, "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation")
        ]
    if ref_high:
        high: dict[str, Any] = {"value": ref_high[0]}
        if ref_high[1]:
            high.update(unit=ref_high[1], system="http://unitsofmeasure.org", code=ref_high[1])
        res["referenceRange"] = [{"high": high}]
    return res


def crp(value: float | None, unit: str = "mg/L", *, days: int = 30, **kw: Any) -> dict[str, Any]:
    return observation("1988-5", effective=days_ago(days), quantity=(value, unit) if value is not None else None, **kw)


def hla_b27(*, days: int = 30, **kw: Any) -> dict[str, Any]:
    return observation("4821-5", effective=days_ago(days), **kw)


def temperature(value: float, unit: str = "Cel", *, days: int = 1, **kw: Any) -> dict[str, Any]:
    return observation("8310-5", effective=days_ago(days), quantity=(value, unit), **kw)


def questionnaire_response(
    answers: dict[str, Any],
    *,
    authored: str | None = None,
    status: str = "completed",
    questionnaire: str = QUESTIONNAIRE,
    rid: str | None = None,
) -> dict[str, Any]:
    """answers: linkId -> bool (valueBoolean), date string for pain-onset-date (valueDate), or a
    (valueX, value) tuple for any other answer type."""
    items = []
    for link_id, value in answers.items():
        if isinstance(value, tuple):
            answer = {value[0]: value[1]}
        elif isinstance(value, bool):
            answer = {"valueBoolean": value}
        else:
            answer = {"valueDate": value}
        items.append({"linkId": link_id, "answer": [answer]})
    res: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": rid or new_id("qr"),
        "questionnaire": questionnaire,
        "status": status,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "item": items,
    }
    if authored:
        res["authored"] = authored
    return res


def med_request(
    code: str,
    system: str = RXNORM,
    *,
    display: str | None = None,
    text: str | None = None,
    status: str = "active",
    authored: str | None = None,
    validity: tuple[str, str | None] | None = None,
    bounds_duration: tuple[float, str] | None = None,
    supply_days: int | None = None,
    repeats: int | None = None,
    rid: str | None = None,
) -> dict[str, Any]:
    concept = cc(code, system, display)
    if text:
        concept["text"] = text
    res: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid or new_id("mr"),
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    if authored:
        res["authoredOn"] = authored
    dispense: dict[str, Any] = {}
    if validity:
        period = {"start": validity[0]}
        if validity[1]:
            period["end"] = validity[1]
        dispense["validityPeriod"] = period
    if supply_days:
        dispense["expectedSupplyDuration"] = {
            "value": supply_days,
            "unit": "days",
            "system": "http://unitsofmeasure.org",
            "code": "d",
        }
    if repeats is not None:
        dispense["numberOfRepeatsAllowed"] = repeats
    if dispense:
        res["dispenseRequest"] = dispense
    if bounds_duration:
        res["dosageInstruction"] = [
            {
                "timing": {
                    "repeat": {
                        "boundsDuration": {
                            "value": bounds_duration[0],
                            "unit": bounds_duration[1],
                            "system": "http://unitsofmeasure.org",
                            "code": bounds_duration[1],
                        }
                    }
                }
            }
        ]
    return res


def service_request(
    code: str,
    system: str = SNOMED,
    *,
    status: str = "draft",
    authored: str | None = None,
    reason: list[dict[str, Any]] | None = None,
    display: str | None = None,
    rid: str | None = None,
    intent: str = "order",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": rid or new_id("sr"),
        "status": status,
        "intent": intent,
        "code": cc(code, system, display),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    if authored:
        res["authoredOn"] = authored
    if reason:
        res["reasonCode"] = reason
    return res


def mri_order(**kw: Any) -> dict[str, Any]:
    kw.setdefault("display", "MRI lumbar spine without contrast")
    return service_request("72148", CPT, **kw)


def ct_order(**kw: Any) -> dict[str, Any]:
    kw.setdefault("display", "CT lumbar spine without contrast")
    return service_request("72131", CPT, **kw)


def xr_order(**kw: Any) -> dict[str, Any]:
    kw.setdefault("display", "XR lumbar spine 2-3 views")
    return service_request("72100", CPT, **kw)


def procedure(code: str, system: str = SNOMED, *, performed: str, status: str = "completed") -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": new_id("proc"),
        "status": status,
        "code": cc(code, system),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "performedDateTime": performed,
    }


def diagnostic_report(code: str, system: str = LOINC, *, effective: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": new_id("dr"),
        "status": status,
        "code": cc(code, system),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": effective,
    }


def imaging_study(
    *,
    started: str,
    procedure_code: tuple[str, str] | None = None,
    body_site: str | None = None,
    status: str = "available",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": new_id("is"),
        "status": status,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "started": started,
    }
    if procedure_code:
        res["procedureCode"] = [cc(procedure_code[1], procedure_code[0])]
    if body_site:
        res["series"] = [
            {
                "uid": "1.2.3.4",
                "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"},
                "bodySite": {"system": SNOMED, "code": body_site},
            }
        ]
    return res


def family_history(relationship: str, code: str, system: str = SNOMED, status: str = "completed") -> dict[str, Any]:
    return {
        "resourceType": "FamilyMemberHistory",
        "id": new_id("fmh"),
        "status": status,
        "patient": {"reference": f"Patient/{PATIENT_ID}"},
        "relationship": cc(relationship, "http://terminology.hl7.org/CodeSystem/v3-RoleCode"),
        "condition": [{"code": cc(code, system)}],
    }


def record(
    *resources: dict[str, Any],
    pat: dict[str, Any] | None = None,
    draft_orders: tuple = (),
    selections: tuple[str, ...] = (),
    missing: tuple[str, ...] = (),
    encounter_id: str | None = "enc1",
    user_id: str | None = "Practitioner/dr1",
    no_patient: bool = False,
) -> PatientRecord:
    return PatientRecord(
        patient_id=PATIENT_ID,
        patient=None if no_patient else (pat if pat is not None else patient()),
        resources=tuple(resources),
        draft_orders=tuple(draft_orders),
        selections=tuple(selections),
        encounter_id=encounter_id,
        user_id=user_id,
        missing=tuple(missing),
    )


def inp(hook: str, rec: PatientRecord, now: datetime = NOW) -> EvaluationInput:
    return EvaluationInput(hook=hook, record=rec, now=now)


def on(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC)
