"""Benchmark payloads: a typical chart around a fixture patient, and charts of any size.

The clinically meaningful part of every payload is a fixture patient (fixtures/patients), shifted to
the evaluation day exactly as the tests shift it, so the service answers the cards the fixture
expects. Around it we add what real charts carry and the rules do not read: vital signs and lab
results, chronic conditions, repeat prescriptions, lab orders and reports, a chest X-ray.

Where the padding goes: a conformant EHR returns every Condition, MedicationRequest,
ServiceRequest, Procedure, ImagingStudy and DiagnosticReport of the patient for the templates that
do not narrow by code, so those go under their own keys. Observation templates do narrow by code;
the padding Observations are put under ``findings`` as an EHR returns them when it ignores the
``code`` parameter (the worst case for the service: every one must be looked at and dropped).
Body temperatures (a code the rules read) go under ``temperatures``, at most 50 as the template's
``_count`` says.

Everything is deterministic (seeded), valid FHIR R4 and uses codes outside every value set of the
product, so the padding never changes which cards are shown.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cds_service.tooling.fixtures import build_request, load_manifest, service_templates

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
BASE_URL = "http://127.0.0.1:8090/fhir"

# The two fixture patients the W1 / W2 payloads are built on (the repository's example requests).
W1_FIXTURE = "axspa-four-criteria"  # patient-view: axSpA referral card
W2_FIXTURE = "acute-nonspecific-mri-2wk"  # order-select, lumbar MRI selected: imaging not indicated

# (code, display, unit, low, high, category) -- vital signs and common labs, none in any value set
OBSERVATION_KINDS = (
    ("8867-4", "Heart rate", "/min", 55, 95, "vital-signs"),
    ("9279-1", "Respiratory rate", "/min", 12, 20, "vital-signs"),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 94, 99, "vital-signs"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 105, 145, "vital-signs"),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 62, 92, "vital-signs"),
    ("29463-7", "Body weight", "kg", 58, 96, "vital-signs"),
    ("8302-2", "Body height", "cm", 158, 190, "vital-signs"),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 19, 31, "vital-signs"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 72, 130, "laboratory"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.8, 7.4, "laboratory"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, "laboratory"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11.5, 16.5, "laboratory"),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 10.5, "laboratory"),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, "laboratory"),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 250, "laboratory"),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 60, 220, "laboratory"),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, "laboratory"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, "laboratory"),
)
CONDITION_KINDS = (
    (SCT, "38341003", "Hypertensive disorder"),
    (SCT, "44054006", "Type 2 diabetes mellitus"),
    (SCT, "55822004", "Hyperlipidemia"),
    (SCT, "195967001", "Asthma"),
    (SCT, "235595009", "Gastroesophageal reflux disease"),
    (SCT, "35489007", "Depressive disorder"),
    (SCT, "40055000", "Chronic sinusitis"),
    (SCT, "267036007", "Dyspnea"),
    (ICD, "J06.9", "Acute upper respiratory infection, unspecified"),
    (ICD, "E03.9", "Hypothyroidism, unspecified"),
    (ICD, "K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    (ICD, "L30.9", "Dermatitis, unspecified"),
)
MEDICATION_KINDS = (
    ("860975", "metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617312", "atorvastatin 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("198211", "simvastatin 40 MG Oral Tablet"),
    ("966222", "levothyroxine sodium 0.05 MG Oral Tablet"),
    ("312940", "sertraline 50 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("310964", "omeprazole 20 MG Delayed Release Oral Capsule"),
)
LAB_ORDER_KINDS = (
    (LOINC, "58410-2", "CBC panel - Blood by Automated count"),
    (LOINC, "57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
    (LOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
    (LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
)
PROCEDURE_KINDS = (
    (SCT, "73761001", "Colonoscopy"),
    (SCT, "234723000", "Dental scaling"),
    (SCT, "33879002", "Administration of vaccine to produce active immunity"),
    (SCT, "268556000", "Retinal screening"),
)


@dataclass(frozen=True)
class Mix:
    """How many resources of each kind a chart adds around the fixture."""

    observations: int = 0
    temperatures: int = 0
    conditions: int = 0
    medications: int = 0
    service_requests: int = 0
    family_history: int = 0
    procedures: int = 0
    imaging_studies: int = 0
    diagnostic_reports: int = 0


# A typical outpatient chart: ~60 resources in the prefetch of an order hook, ~55 on patient-view.
TYPICAL = Mix(observations=30, temperatures=3, conditions=8, medications=8, service_requests=4,
              family_history=1, procedures=3, imaging_studies=1, diagnostic_reports=3)


def scaled_mix(extra: int) -> Mix:
    """*extra* resources for W3, mostly irrelevant Observations, as real charts are (patient-view keys).

    Body temperatures grow with the chart (1 in 200) up to the 50 the template's _count allows.
    """
    temperatures = min(50, max(1, extra // 200))
    rest = max(0, extra - temperatures)
    conditions = rest * 8 // 100
    medications = rest * 7 // 100
    service_requests = rest * 4 // 100
    family_history = min(2, rest // 100)
    observations = rest - conditions - medications - service_requests - family_history
    return Mix(observations=observations, temperatures=temperatures, conditions=conditions,
               medications=medications, service_requests=service_requests, family_history=family_history)


class ChartBuilder:
    """Deterministic padding resources for one patient, dated before *today*."""

    def __init__(self, patient_id: str, today: date, seed: int = 7):
        self.patient_id = patient_id
        self.today = today
        self.rng = random.Random(seed)
        self.counter = 0

    def _id(self, kind: str) -> str:
        self.counter += 1
        return f"bench-{kind}-{self.counter}"

    def _subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def _when(self, max_days: int = 5 * 365, min_days: int = 20) -> datetime:
        days = self.rng.randint(min_days, max_days)
        minutes = self.rng.randint(7 * 60, 18 * 60)
        return datetime.combine(self.today - timedelta(days=days), datetime.min.time(), UTC) + timedelta(
            minutes=minutes
        )

    def observation(self) -> dict[str, Any]:
        code, display, unit, low, high, category = self.rng.choice(OBSERVATION_KINDS)
        when = self._when()
        value = round(self.rng.uniform(low, high), 1)
        return {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "meta": {"lastUpdated": when.isoformat().replace("+00:00", "Z")},
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category,
                                      "display": category.replace("-", " ").title()}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": self._subject(),
            "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
            "issued": (when + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "N", "display": "Normal"}]}],
        }

    def temperature(self) -> dict[str, Any]:
        when = self._when(max_days=3 * 365, min_days=30)  # normal and older than the fever window
        return {
            "resourceType": "Observation",
            "id": self._id("temp"),
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}]},
            "subject": self._subject(),
            "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
            "valueQuantity": {"value": round(self.rng.uniform(36.3, 37.3), 1), "unit": "Cel",
                              "system": UCUM, "code": "Cel"},
        }

    def condition(self) -> dict[str, Any]:
        system, code, display = self.rng.choice(CONDITION_KINDS)
        onset = self._when(max_days=15 * 365, min_days=60).date().isoformat()
        return {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "clinicalStatus": {"coding": [{"system": COND_CLINICAL, "code": "active", "display": "Active"}]},
            "verificationStatus": {"coding": [{"system": COND_VERIFICATION, "code": "confirmed",
                                               "display": "Confirmed"}]},
            "category": [{"coding": [{"system": COND_CATEGORY, "code": "problem-list-item",
                                      "display": "Problem List Item"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": self._subject(),
            "onsetDateTime": onset,
            "recordedDate": onset,
        }

    def medication(self) -> dict[str, Any]:
        code, display = self.rng.choice(MEDICATION_KINDS)
        start = self._when(max_days=6 * 365, min_days=30).date()
        return {
            "resourceType": "MedicationRequest",
            "id": self._id("medrx"),
            "status": self.rng.choice(("active", "completed", "stopped")),
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}],
                                          "text": display},
            "subject": self._subject(),
            "authoredOn": start.isoformat(),
            "dosageInstruction": [{"text": "1 tablet by mouth once daily",
                                   "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}],
            "dispenseRequest": {"validityPeriod": {"start": start.isoformat(),
                                                   "end": (start + timedelta(days=365)).isoformat()},
                                "numberOfRepeatsAllowed": 3},
        }

    def service_request(self) -> dict[str, Any]:
        system, code, display = self.rng.choice(LAB_ORDER_KINDS)
        when = self._when(max_days=4 * 365)
        return {
            "resourceType": "ServiceRequest",
            "id": self._id("sr"),
            "status": "completed",
            "intent": "order",
            "category": [{"coding": [{"system": SCT, "code": "108252007", "display": "Laboratory procedure"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": self._subject(),
            "authoredOn": when.isoformat().replace("+00:00", "Z"),
        }

    def family_history(self) -> dict[str, Any]:
        return {
            "resourceType": "FamilyMemberHistory",
            "id": self._id("fmh"),
            "status": "completed",
            "patient": self._subject(),
            "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                         "code": "FTH", "display": "father"}]},
            "condition": [{"code": {"coding": [{"system": SCT, "code": "38341003",
                                                "display": "Hypertensive disorder"}]}}],
        }

    def procedure(self) -> dict[str, Any]:
        system, code, display = self.rng.choice(PROCEDURE_KINDS)
        return {
            "resourceType": "Procedure",
            "id": self._id("proc"),
            "status": "completed",
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": self._subject(),
            "performedDateTime": self._when().isoformat().replace("+00:00", "Z"),
        }

    def imaging_study(self) -> dict[str, Any]:
        when = self._when(max_days=4 * 365, min_days=400).isoformat().replace("+00:00", "Z")
        return {
            "resourceType": "ImagingStudy",
            "id": self._id("img"),
            "status": "available",
            "subject": self._subject(),
            "started": when,
            "series": [{"uid": f"2.25.{self.rng.randint(10**12, 10**13)}",
                        "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"},
                        "bodySite": {"system": SCT, "code": "51185008", "display": "Thoracic structure"}}],
        }

    def diagnostic_report(self) -> dict[str, Any]:
        system, code, display = self.rng.choice(LAB_ORDER_KINDS[:3])
        when = self._when().isoformat().replace("+00:00", "Z")
        return {
            "resourceType": "DiagnosticReport",
            "id": self._id("dr"),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": self._subject(),
            "effectiveDateTime": when,
            "issued": when,
        }

    def build(self, mix: Mix) -> dict[str, list[dict[str, Any]]]:
        """Padding resources by the prefetch key a FHIR server would return them under."""
        return {
            "findings": [self.observation() for _ in range(mix.observations)],
            "temperatures": [self.temperature() for _ in range(mix.temperatures)],
            "conditions": [self.condition() for _ in range(mix.conditions)],
            "medications": [self.medication() for _ in range(mix.medications)],
            "serviceRequests": [self.service_request() for _ in range(mix.service_requests)],
            "familyHistory": [self.family_history() for _ in range(mix.family_history)],
            "procedures": [self.procedure() for _ in range(mix.procedures)],
            "imagingStudies": [self.imaging_study() for _ in range(mix.imaging_studies)],
            "diagnosticReports": [self.diagnostic_report() for _ in range(mix.diagnostic_reports)],
        }


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"{BASE_URL}/{resource['resourceType']}/{resource['id']}", "resource": resource,
            "search": {"mode": "match"}}


@dataclass
class Payload:
    name: str
    hook: str
    service_id: str
    body: dict[str, Any]
    resources: int  # FHIR resources in the prefetch (the Patient included)
    expected_topics: list[str]
    chart: list[dict[str, Any]]  # every resource of the chart (fixture + padding), for a FHIR server


def _count_prefetch(prefetch: dict[str, Any]) -> int:
    total = 0
    for value in prefetch.values():
        if isinstance(value, dict):
            total += len(value.get("entry") or []) if value.get("resourceType") == "Bundle" else 1
    return total


def build_payload(name: str, slug: str, hook: str, mix: Mix, today: date | None = None) -> Payload:
    """A full-prefetch request for *hook* on fixture *slug*, with *mix* padding resources."""
    today = today or date.today()
    fixture = load_manifest().get(slug).load(shift_to=today)
    templates = service_templates()[hook]
    body = build_request(fixture, hook, templates, with_prefetch=True)
    padding = ChartBuilder(fixture.patient_id, today).build(mix)
    prefetch = body["prefetch"]
    chart = list(fixture.resources)
    for key, resources in padding.items():
        if not resources:
            continue
        chart.extend(resources)
        if key not in prefetch:
            continue  # not a key of this hook (e.g. procedures on patient-view)
        bundle = prefetch[key]
        bundle["entry"] = [*bundle.get("entry", []), *(_entry(r) for r in resources)]
        bundle["total"] = len(bundle["entry"])
    from cds_service.registry import SERVICE_IDS

    return Payload(
        name=name,
        hook=hook,
        service_id=SERVICE_IDS[hook],
        body=body,
        resources=_count_prefetch(prefetch),
        expected_topics=fixture.spec.expected(hook),
        chart=chart,
    )


def w1_payload(today: date | None = None) -> Payload:
    return build_payload("W1 patient-view", W1_FIXTURE, "patient-view", TYPICAL, today)


def w2_payload(today: date | None = None) -> Payload:
    return build_payload("W2 order-select (lumbar MRI)", W2_FIXTURE, "order-select", TYPICAL, today)


def scaling_payload(total: int, today: date | None = None) -> Payload:
    """W3: a patient-view request whose prefetch holds *total* resources (the fixture's included)."""
    base = build_payload("base", W1_FIXTURE, "patient-view", Mix(), today)
    extra = max(0, total - base.resources)
    payload = build_payload(f"W3 {total}", W1_FIXTURE, "patient-view", scaled_mix(extra), today)
    return payload


def transaction_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that PUTs *resources* (idempotent), for loading a FHIR server."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r,
             "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
