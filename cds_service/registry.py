"""The service registry: each CDS service is a hook, its prefetch templates and a pure evaluate().

Adding a rule touches cds_service/clinical and cards/ only; adding a service touches this file only.
Prefetch templates are generated from the value sets at start-up so a site's local codes are
searched for too. Why each template exists is documented in README ("Prefetch templates").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .clinical import evaluate as clinical_evaluate
from .clinical.knowledge import Knowledge
from .clinical.model import Decision, EvaluationInput

PATIENT = "{{context.patientId}}"
# every MedicationStatement status but entered-in-error and not-taken (a stopped course was still taken;
# the clinical reader judges the rest)
STATEMENT_STATUSES = "active,completed,stopped,on-hold,intended,unknown"
# hook → service id: the only place service ids are written (fixtures, benchmarks and docs read it here)
SERVICE_IDS = {
    "patient-view": "lbp-patient-view",
    "order-select": "lbp-imaging-order-select",
    "order-sign": "lbp-imaging-order-sign",
}


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]
    evaluate: Callable[[EvaluationInput], list[Decision]]
    usage_requirements: str | None = None
    # keys whose template asks for "the latest N" (_sort + _count): the first page is the answer
    first_page_only: frozenset[str] = field(default_factory=frozenset)
    # keys whose readings must reach this many days back (completed by a date-bounded search)
    windows: dict[str, int] = field(default_factory=dict)

    def discovery(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
        }
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry


def prefetch_templates(knowledge: Knowledge) -> dict[str, str]:
    """Every template any service uses, keyed by prefetch key."""
    return {
        "patient": f"Patient/{PATIENT}",
        "conditions": f"Condition?patient={PATIENT}",
        "crp": f"Observation?patient={PATIENT}&code={knowledge.search_tokens('crp')}&_sort=-date&_count=5",
        "hlaB27": f"Observation?patient={PATIENT}&code={knowledge.search_tokens('hla-b27')}&_sort=-date&_count=5",
        "temperatures": (
            f"Observation?patient={PATIENT}&code={knowledge.search_tokens('body-temperature')}&_sort=-date&_count=50"
        ),
        "findings": f"Observation?patient={PATIENT}&code={knowledge.search_tokens('symptom-findings')}",
        # by patient only: a `questionnaire=` search matches canonicals exactly on many servers and would
        # miss `…|1.0.0`; the clinical reader keeps completed/amended responses to any version of
        # knowledge.QUESTIONNAIRE_URL (a patient has a handful of responses: no server-side filter is needed)
        "questionnaireResponses": f"QuestionnaireResponse?patient={PATIENT}",
        "medications": f"MedicationRequest?patient={PATIENT}",
        "medicationStatements": f"MedicationStatement?patient={PATIENT}&status={STATEMENT_STATUSES}",
        "familyHistory": f"FamilyMemberHistory?patient={PATIENT}",
        "serviceRequests": f"ServiceRequest?patient={PATIENT}",
        "procedures": f"Procedure?patient={PATIENT}",
        "imagingStudies": f"ImagingStudy?patient={PATIENT}",
        "diagnosticReports": f"DiagnosticReport?patient={PATIENT}",
    }


LATEST_ONLY = frozenset({"crp", "hlaB27", "temperatures"})
PATIENT_VIEW_KEYS = (
    "patient", "conditions", "crp", "hlaB27", "temperatures", "findings",
    "questionnaireResponses", "medications", "medicationStatements", "familyHistory", "serviceRequests",
)
ORDER_KEYS = (*PATIENT_VIEW_KEYS, "procedures", "imagingStudies", "diagnosticReports")


def complete_windows(knowledge: Knowledge) -> dict[str, int]:
    """Prefetch keys whose readings must cover a whole window (days), and the threshold that sets it."""
    return {"temperatures": knowledge.thresholds.fever_window_days}


def build_registry(knowledge: Knowledge) -> dict[str, ServiceDefinition]:
    templates = prefetch_templates(knowledge)
    windows = complete_windows(knowledge)

    def evaluate(inp: EvaluationInput) -> list[Decision]:
        return clinical_evaluate(inp, knowledge)

    def pick(keys: tuple[str, ...]) -> dict[str, str]:
        return {key: templates[key] for key in keys}

    services = [
        ServiceDefinition(
            id=SERVICE_IDS["patient-view"],
            hook="patient-view",
            title="Low back pain: red flags, axial spondyloarthritis and self-management",
            description=(
                "When a chart opens: flags red flags for serious spinal pathology (cauda equina, malignancy, "
                "infection, fracture, neurological deficit), suspected axial spondyloarthritis in chronic back "
                "pain that began before 45 (NICE NG65) with a rheumatology referral or HLA-B27 test, and "
                "self-management advice for nonspecific low back pain (NICE NG59, ACP 2017)."
            ),
            prefetch=pick(PATIENT_VIEW_KEYS),
            evaluate=evaluate,
            first_page_only=LATEST_ONLY,
            windows=windows,
        ),
        ServiceDefinition(
            id=SERVICE_IDS["order-select"],
            hook="order-select",
            title="Low back pain: lumbar imaging appropriateness (order selection)",
            description=(
                "While a lumbar spine X-ray, CT or MRI is selected: advises against routine imaging for "
                "nonspecific low back pain without red flags (ACP 2011, NICE NG59, Choosing Wisely, ACR "
                "Appropriateness Criteria 2021), lets imaging justified by red flags through, and suggests "
                "sacroiliac-joint imaging when axial spondyloarthritis is suspected."
            ),
            prefetch=pick(ORDER_KEYS),
            evaluate=evaluate,
            first_page_only=LATEST_ONLY,
            windows=windows,
        ),
        ServiceDefinition(
            id=SERVICE_IDS["order-sign"],
            hook="order-sign",
            title="Low back pain: lumbar imaging appropriateness (order signing)",
            description=(
                "When orders are signed: the lumbar imaging appropriateness checks applied to every unsigned "
                "lumbar spine imaging order."
            ),
            prefetch=pick(ORDER_KEYS),
            evaluate=evaluate,
            first_page_only=LATEST_ONLY,
            windows=windows,
        ),
    ]
    return {service.id: service for service in services}
