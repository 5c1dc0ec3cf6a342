"""FHIR ServiceRequests and CDS Hooks actions behind the suggestions.

Every created resource is a complete R4 ServiceRequest (status draft; intent "order" for lab and imaging
orders, "proposal" for referrals, which the receiving service still has to accept), validated with
fhir.resources R4B before it is returned. Ids are deterministic (UUID5 of patient, kind, code, source
order and evaluation time) so that evaluation stays a pure function. Labels live in cards/: a
SuggestionSpec carries only its ``kind`` and the label's params.

Validation is split (see ``_validate``): the fixed part of a resource (its template) is validated with the
full ServiceRequest model once per distinct template, the per-call values with the model's own field types.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import orjson
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import BaseModel, TypeAdapter

from cds_service.clinical.codes import CPT, LOINC, SNOMED
from cds_service.clinical.model import PatientRecord, SuggestionSpec

_NAMESPACE = uuid.UUID("6f1c53f2-6a3e-4c59-9d0e-2f6a8f1f4b10")
CATEGORY = "http://snomed.info/sct"


@dataclass(frozen=True)
class Code:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


RHEUMATOLOGY_REFERRAL = Code(SNOMED, "306290009", "Referral to rheumatologist")
PHYSIOTHERAPY_REFERRAL = Code(SNOMED, "306170007", "Referral to physiotherapy service")
CRP_LAB = Code(LOINC, "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma")
HLA_B27_LAB = Code(LOINC, "4821-5", "HLA-B27 [Presence]")
SIJ_XR_LOINC = Code(LOINC, "24900-3", "XR Sacroiliac Joint Views")
SIJ_XR_CPT = Code(CPT, "72200", "Radiologic examination, sacroiliac joints; less than 3 views")
LABS = {"crp": ("CRP", CRP_LAB), "hla-b27": ("HLA-B27", HLA_B27_LAB)}
# The lumbar study a replace suggestion creates (imaging step 2 / 5, rev 2), LOINC first then CPT.
STUDY_CODES: dict[str, tuple[Code, Code]] = {
    "mri-without-contrast": (
        Code(LOINC, "30679-5", "MR Lumbar spine WO contrast"),
        Code(CPT, "72148", "Magnetic resonance imaging, spinal canal and contents, lumbar; without contrast material"),
    ),
    "mri-without-and-with-contrast": (
        Code(LOINC, "24967-2", "MR Lumbar spine WO and W contrast IV"),
        Code(
            CPT,
            "72158",
            "Magnetic resonance imaging, spinal canal and contents, lumbar; without contrast material, "
            "followed by contrast material(s) and further sequences",
        ),
    ),
    "xr": (
        Code(LOINC, "24972-2", "XR Lumbar spine Views"),
        Code(CPT, "72100", "Radiologic examination, spine, lumbosacral; 2 or 3 views"),
    ),
    "ct-without-contrast": (
        Code(LOINC, "30620-9", "CT Lumbar spine WO contrast"),
        Code(CPT, "72131", "Computed tomography, lumbar spine; without contrast material"),
    ),
}

CATEGORY_LAB = {"system": CATEGORY, "code": "108252007", "display": "Laboratory procedure"}
CATEGORY_IMAGING = {"system": CATEGORY, "code": "363679005", "display": "Imaging"}
CATEGORY_REFERRAL = {"system": CATEGORY, "code": "3457005", "display": "Patient referral"}


class SuggestionBuildError(ValueError):
    """A created resource did not validate (a bug or unusable input): the suggestion is dropped."""


@dataclass(frozen=True)
class OrderContext:
    """Who and where: the hook context values a created order needs."""

    patient_id: str
    encounter_id: str | None
    user_id: str | None
    now: datetime
    # JSON (sorted keys) of the reason codes already validated during this evaluation: the rules copy the
    # same reason codes into several suggestions. One evaluation only.
    validated: set[bytes] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def from_record(cls, record: PatientRecord, now: datetime) -> OrderContext:
        return cls(record.patient_id, record.encounter_id, record.user_id, now)

    @property
    def requester(self) -> dict[str, str] | None:
        user = self.user_id or ""
        if user.startswith(("Practitioner/", "PractitionerRole/")):
            return {"reference": user}
        return None


def _json_key(kind: str, data: dict[str, Any]) -> bytes | None:
    try:
        return kind.encode() + b":" + orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None  # not plain JSON: always validated


def clean_reason_codes(concepts: Iterable[Any], validated: set[bytes] | None = None) -> list[dict[str, Any]]:
    """Keep only reasonCode entries that are valid CodeableConcepts (they are copied from EHR input).

    *validated*: keys of concepts already found valid in this evaluation (see OrderContext.validated).
    """
    kept: list[dict[str, Any]] = []
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        key = _json_key("CodeableConcept", concept) if validated is not None else None
        if key is None or key not in validated:
            try:
                CodeableConcept.model_validate(concept)
            except Exception:  # noqa: BLE001 - invalid input is dropped, never fatal
                continue
            if key is not None:
                validated.add(key)  # type: ignore[union-attr]
        kept.append(concept)
    return kept


def service_request(
    ctx: OrderContext,
    code: Code,
    *,
    kind: str,
    intent: str,
    category: dict[str, str],
    reason_codes: Iterable[Any] = (),
    supporting_info: Iterable[str] = (),
    extra_codings: Iterable[Code] = (),
    source: str = "",
    note: str | None = None,
) -> dict[str, Any]:
    """A complete, validated draft ServiceRequest."""
    seed = f"{ctx.patient_id}|{kind}|{code.system}|{code.code}|{source}|{ctx.now.isoformat()}"
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(uuid.uuid5(_NAMESPACE, seed)),
        "status": "draft",
        "intent": intent,
        "category": [{"coding": [category]}],
        "priority": "routine",
        "code": {"coding": [code.coding()] + [c.coding() for c in extra_codings], "text": code.display},
        "subject": {"reference": f"Patient/{ctx.patient_id}"},
        "authoredOn": ctx.now.isoformat(),
    }
    if ctx.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{ctx.encounter_id.split('/')[-1]}"}
    if ctx.requester:
        resource["requester"] = ctx.requester
    reasons = clean_reason_codes(reason_codes, ctx.validated)
    if reasons:
        resource["reasonCode"] = reasons
    usable = (r.split("#")[0] for r in supporting_info if isinstance(r, str) and "/" in r and "?" not in r)
    refs = list(dict.fromkeys(usable))
    if refs:
        resource["supportingInfo"] = [{"reference": r} for r in refs]
    if note:
        resource["note"] = [{"text": note}]
    _validate(kind, resource)
    return resource


def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """The validator *model* applies to its field *name*: the field's own annotation and constraints."""
    info = model.model_fields[name]
    annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(annotation, config=model.model_config)


_ID = _field_adapter(ServiceRequest, "id")
_AUTHORED_ON = _field_adapter(ServiceRequest, "authoredOn")
_REFERENCE = _field_adapter(Reference, "reference")
# Elements whose value depends on the call; everything else in a resource is its template (the note too:
# each kind passes a fixed text).
_PER_CALL = ("id", "subject", "encounter", "requester", "authoredOn", "reasonCode", "supportingInfo")
# Valid values of the per-call elements, in the template while it is validated (subject is required).
_PLACEHOLDERS: dict[str, Any] = {
    "id": "00000000-0000-5000-8000-000000000000",
    "subject": {"reference": "Patient/placeholder"},
    "encounter": {"reference": "Encounter/placeholder"},
    "requester": {"reference": "Practitioner/placeholder"},
    "authoredOn": "2000-01-01T00:00:00+00:00",
    "reasonCode": [{"text": "placeholder"}],
    "supportingInfo": [{"reference": "Condition/placeholder"}],
}
# JSON keys of templates that validated. Finite in practice (kinds x codes); the bound only guards misuse.
_VALID_TEMPLATES: set[bytes] = set()
_MAX_TEMPLATES = 256


def _validate(kind: str, resource: dict[str, Any]) -> None:
    """Raise SuggestionBuildError exactly when ``ServiceRequest.model_validate(resource)`` would fail.

    The template (every element not in _PER_CALL: resourceType, status, intent, category, priority, code,
    note) is validated with the full model once, with _PLACEHOLDERS for the per-call elements. The
    per-call values are validated with the model's own field annotations (_field_adapter): the id and
    authoredOn strings, the ``reference`` string of subject, encounter, requester and each supportingInfo
    (service_request builds those as ``{"reference": str}``); reasonCode entries were validated with
    CodeableConcept.model_validate by clean_reason_codes, which is what the model does with each entry.

    Nothing else can make the full resource fail. Pydantic validates each field on its own; the model-level
    checks of ServiceRequest, Reference and Annotation (fhir_core fhirabstractmodel.py) are
    - ``__init__`` (run by model_validate, the models have a custom init): a ``resourceType`` other than
      the model's is rejected; only the template has one;
    - reject_null_complex_elements: a None inside a list of complex elements; the per-call lists hold
      only dicts built here (reasonCode only the dicts clean_reason_codes kept);
    - _validate_required_primitive_elements: status and intent (ServiceRequest), text (Annotation): the
      template's; Reference has none;
    - _validate_one_of_many: asNeeded[x], occurrence[x], quantity[x] (ServiceRequest), author[x] (Annotation):
      never set here; Reference has none;
    - fhir_model_validator (fhir_core types.py, the wrapper of every complex field): a dict is validated
      with the field's model and then only its class and resource type are checked, always those of the
      field's model. So a ``{"reference": s}`` dict is valid exactly when *s* is a valid Reference.reference.
    None of the three models has a field validator (tests/clinical/test_orders_templates.py checks this,
    with the differential test against _validate_fully).
    """
    template = {k: v for k, v in resource.items() if k not in _PER_CALL}
    key = _json_key("ServiceRequest", template)
    if key is None or key not in _VALID_TEMPLATES:  # only successes are remembered: a failure raises each time
        try:
            ServiceRequest.model_validate({**template, **_PLACEHOLDERS})
        except Exception as exc:  # noqa: BLE001
            raise SuggestionBuildError(f"{kind}: created ServiceRequest does not validate: {exc}") from exc
        if key is not None and len(_VALID_TEMPLATES) < _MAX_TEMPLATES:
            _VALID_TEMPLATES.add(key)
    references = [resource["subject"]["reference"]]
    for name in ("encounter", "requester"):
        if name in resource:
            references.append(resource[name]["reference"])
    references.extend(r["reference"] for r in resource.get("supportingInfo", ()))
    try:
        _ID.validate_python(resource["id"])
        _AUTHORED_ON.validate_python(resource["authoredOn"])
        for reference in references:
            _REFERENCE.validate_python(reference)
    except Exception as exc:  # noqa: BLE001
        raise SuggestionBuildError(f"{kind}: created ServiceRequest does not validate: {exc}") from exc


def _validate_fully(resource: dict[str, Any]) -> None:
    """The full model validation every resource had before templates: for the differential test only."""
    ServiceRequest.model_validate(resource)


def _create(description: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"type": "create", "description": description, "resource": resource}


def remove_order(order_reference: str, order_display: str, *, recommended: bool = True) -> SuggestionSpec:
    action = {
        "type": "delete",
        "description": f"Remove the draft order: {order_display}",
        "resourceId": order_reference,
    }
    return SuggestionSpec("remove-order", (action,), recommended, {"order_display": order_display})


def refer_physiotherapy(
    ctx: OrderContext, reason_codes: Iterable[Any], supporting: Iterable[str] = ()
) -> SuggestionSpec:
    resource = service_request(
        ctx,
        PHYSIOTHERAPY_REFERRAL,
        kind="refer-physiotherapy",
        intent="proposal",
        category=CATEGORY_REFERRAL,
        reason_codes=reason_codes,
        supporting_info=supporting,
    )
    return SuggestionSpec("refer-physiotherapy", (_create("Refer to physiotherapy", resource),), False, {})


def refer_rheumatology(ctx: OrderContext, reason_codes: Iterable[Any], supporting: Iterable[str]) -> SuggestionSpec:
    resource = _rheumatology_referral(ctx, reason_codes, supporting)
    return SuggestionSpec("refer-rheumatology", (_create("Refer to rheumatology", resource),), True, {})


def _rheumatology_referral(ctx: OrderContext, reason_codes: Iterable[Any], supporting: Iterable[str]) -> dict[str, Any]:
    return service_request(
        ctx,
        RHEUMATOLOGY_REFERRAL,
        kind="refer-rheumatology",
        intent="proposal",
        category=CATEGORY_REFERRAL,
        reason_codes=reason_codes,
        supporting_info=supporting,
        note="Suspected axial spondyloarthritis (NICE NG65 criteria).",
    )


def lab_order(ctx: OrderContext, lab: str, reason_codes: Iterable[Any], supporting: Iterable[str]) -> dict[str, Any]:
    _, code = LABS[lab]
    return service_request(
        ctx,
        code,
        kind=f"lab-{lab}",
        intent="order",
        category=CATEGORY_LAB,
        reason_codes=reason_codes,
        supporting_info=supporting,
    )


def refer_rheumatology_with_labs(
    ctx: OrderContext, labs: list[str], reason_codes: Iterable[Any], supporting: Iterable[str]
) -> SuggestionSpec:
    """The referral plus the lab orders (only the labs given: those without a recent result)."""
    reason_codes, supporting = list(reason_codes), list(supporting)
    actions = [_create("Refer to rheumatology", _rheumatology_referral(ctx, reason_codes, supporting))]
    names = []
    for lab in labs:
        name, _ = LABS[lab]
        names.append(name)
        actions.append(_create(f"Order {name}", lab_order(ctx, lab, reason_codes, supporting)))
    return SuggestionSpec(
        "refer-rheumatology-with-labs",
        tuple(actions),
        False,
        {"labs": names, "labs_text": " and ".join(names)},
    )


def order_hla_b27(ctx: OrderContext, reason_codes: Iterable[Any], supporting: Iterable[str]) -> SuggestionSpec:
    resource = lab_order(ctx, "hla-b27", reason_codes, supporting)
    return SuggestionSpec("order-hla-b27", (_create("Order HLA-B27", resource),), True, {})


def replace_with_sij_imaging(
    ctx: OrderContext,
    order_reference: str,
    order_display: str,
    reason_codes: Iterable[Any],
    supporting: Iterable[str] = (),
) -> SuggestionSpec:
    """Delete the lumbar CT/MRI draft and create an SI-joint radiograph (EULAR 2015: radiograph first)."""
    resource = service_request(
        ctx,
        SIJ_XR_LOINC,
        kind="replace-with-sij-imaging",
        intent="order",
        category=CATEGORY_IMAGING,
        reason_codes=reason_codes,
        supporting_info=supporting,
        extra_codings=(SIJ_XR_CPT,),
        source=order_reference,
        note="Suspected axial spondyloarthritis: image the SI joints (MRI of the SI joints if unclear).",
    )
    actions = (
        {
            "type": "delete",
            "description": f"Remove the draft order: {order_display}",
            "resourceId": order_reference,
        },
        _create("Order a radiograph of the sacroiliac joints", resource),
    )
    return SuggestionSpec(
        "replace-with-sij-imaging",
        actions,
        True,
        {"order_display": order_display, "replacement_display": SIJ_XR_LOINC.display},
    )


def replace_with_study(
    ctx: OrderContext, order_reference: str, order_display: str, study: str, reason_codes: Iterable[Any]
) -> SuggestionSpec:
    """Delete the draft lumbar imaging order and create the study the ACR variant prefers (rev 2), carrying
    the draft's reasonCode. Never a bare "remove": a red flag is present."""
    loinc, cpt = STUDY_CODES[study]
    resource = service_request(
        ctx,
        loinc,
        kind="replace-with-preferred-imaging",
        intent="order",
        category=CATEGORY_IMAGING,
        reason_codes=reason_codes,
        extra_codings=(cpt,),
        source=order_reference,
    )
    actions = (
        {"type": "delete", "description": f"Remove the draft order: {order_display}", "resourceId": order_reference},
        _create(f"Order {loinc.display}", resource),
    )
    return SuggestionSpec(
        "replace-with-preferred-imaging",
        actions,
        True,
        {"order_display": order_display, "replacement_display": loinc.display, "study": study},
    )
