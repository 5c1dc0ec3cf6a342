"""Pass 1 of fact building: a cheap relevance filter on the raw dicts, then FHIR validation.

A chart holds thousands of resources; only those coded in one of the product's value sets (or our
Questionnaire's responses, medication statements/requests, imaging studies, family history) can matter.
Those few are validated with fhir.resources R4B (validation.py); a resource that fails is skipped and listed in
``skipped`` -- never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cds_service.clinical.codes import iter_codings
from cds_service.clinical.facts.validation import validate
from cds_service.clinical.fhir_read import reference_of
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.questionnaire import is_our_questionnaire

CODED_TYPES = ("Condition", "Observation", "Procedure", "ServiceRequest", "DiagnosticReport")
_CODED_TYPE_SET = frozenset(CODED_TYPES)
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement")


def _list(value: Any) -> list[Any]:
    """An array element as a list; anything else (malformed input) as empty, never a crash."""
    return value if isinstance(value, list) else []


def _is_relevant(resource: dict[str, Any], knowledge: Knowledge) -> bool:
    rtype = resource.get("resourceType")
    if rtype in CODED_TYPES:
        return knowledge.is_known_code(resource.get("code"))
    if rtype == "QuestionnaireResponse":
        return is_our_questionnaire(resource.get("questionnaire"))
    if rtype in MEDICATION_TYPES:
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


@dataclass
class Sorted:
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    medications: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def of(self, rtype: str) -> list[dict[str, Any]]:
        return self.by_type.get(rtype, [])


def sort_resources(resources: Iterable[Any], knowledge: Knowledge) -> Sorted:
    result = Sorted()
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
        error = validate(resource)
        if error:
            result.skipped.append(f"{reference_of(resource)}: {error}")
            continue
        result.by_type.setdefault(resource["resourceType"], []).append(resource)
    # Medications are validated only when a relevant MedicationRequest/Statement refers to them.
    for request in (*result.of("MedicationRequest"), *result.of("MedicationStatement")):
        ref = (request.get("medicationReference") or {}).get("reference")
        if isinstance(ref, str) and ref.split("/")[-1] in raw_medications:
            med = raw_medications[ref.split("/")[-1]]
            if med["id"] not in result.medications:
                error = validate(med)
                if error:
                    result.skipped.append(f"{reference_of(med)}: {error}")
                else:
                    result.medications[med["id"]] = med
    return result
