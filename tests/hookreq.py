"""Builders for CDS Hooks requests used across test packages."""

from __future__ import annotations

import uuid
from typing import Any

SERVICE_FOR_HOOK = {
    "patient-view": "lbp-patient-view",
    "order-select": "lbp-imaging-order-select",
    "order-sign": "lbp-imaging-order-sign",
}


def lumbar_mri(order_id: str = "order-1", patient_id: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148",
                             "display": "MRI lumbar spine without contrast"}]},
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "279039007",
                                    "display": "Low back pain"}]}],
    }


def hook_request(
    hook: str = "patient-view",
    patient_id: str = "p1",
    prefetch: dict[str, Any] | None = None,
    orders: list[dict[str, Any]] | None = None,
    selections: list[str] | None = None,
    fhir_server: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": patient_id}
    if hook in {"order-select", "order-sign"}:
        orders = orders if orders is not None else [lumbar_mri(patient_id=patient_id)]
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": o} for o in orders]}
        if hook == "order-select":
            context["selections"] = selections or [f"ServiceRequest/{orders[0]['id']}"]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server:
        body["fhirServer"] = fhir_server
        if token:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "cds-service"}
    return body


def empty_prefetch(templates: dict[str, str], patient_id: str = "p1", patient: dict | None = None) -> dict[str, Any]:
    """Full prefetch for a patient with no clinical data: the Patient and empty searchsets."""
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        if template.startswith("Patient/"):
            prefetch[key] = patient or {"resourceType": "Patient", "id": patient_id, "gender": "female",
                                        "birthDate": "1980-01-01"}
        else:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    return prefetch
