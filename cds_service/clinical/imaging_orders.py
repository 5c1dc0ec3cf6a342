"""Draft imaging orders as the imaging rules see them (spec sections 1 and 2, rev 2).

Which draft ServiceRequests are lumbar imaging (coded CPT/LOINC/SNOMED, or, when no coding is in a lumbar
value set, text that plainly names lumbar imaging: data/imaging-order-text.yaml), which study they are
(modality and contrast, from the contrast value sets or the text), whether they also image the
sacroiliac joints or pelvis, and whether the order itself gives back pain as its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_service.clinical.codes import concept_text, describe_coding, iter_codings
from cds_service.clinical.facts import PatientFacts
from cds_service.clinical.fhir_read import reference_of
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Evidence, PatientRecord

OPEN_ORDER_STATUSES = frozenset({"draft", "active", "on-hold"})
BACK_PAIN_VALUESETS = ("low-back-pain", "radicular-pain")
MODALITIES = (("mri", "lumbar-imaging-mri"), ("ct", "lumbar-imaging-ct"), ("xr", "lumbar-imaging-xr"))
# contrast value sets, checked in this order (a coding in none of them: contrast not specified)
CONTRASTS = (
    ("without-and-with", "imaging-contrast-without-and-with"),
    ("with", "imaging-contrast-with"),
    ("without", "imaging-contrast-without"),
)


@dataclass(frozen=True)
class ImagingOrder:
    resource: dict[str, Any]
    reference: str
    display: str
    modality: str  # mri / ct / xr
    coding: dict[str, Any] | None  # None when recognised from text
    contrast: str | None = None  # without / with / without-and-with; None = not specified (or radiograph)
    from_text: bool = False
    images_sacroiliac: bool = False  # also images the SI joints or pelvis (step 3 does not apply)

    @property
    def study(self) -> str:
        """Study id (cards/labels/imaging.yaml "studies"): e.g. mri-without-contrast, ct, xr."""
        if self.modality in ("mri", "ct") and self.contrast:
            return f"{self.modality}-{self.contrast}-contrast"
        return self.modality

    def evidence(self) -> Evidence:
        if self.coding is not None:
            return Evidence(self.reference, f"Draft order: {describe_coding(self.coding)}")
        return Evidence(self.reference, f"Draft order: {self.display}", value="recognised from text")


def _unwrap(entry: Any) -> dict[str, Any] | None:
    if isinstance(entry, dict) and "resourceType" not in entry and isinstance(entry.get("resource"), dict):
        return entry["resource"]
    return entry if isinstance(entry, dict) else None


def _selected(order: dict[str, Any], selections: tuple[str, ...]) -> bool:
    """selections hold "ServiceRequest/<id>" (absolute URLs and version suffixes tolerated)."""
    wanted = ["ServiceRequest", order.get("id")]
    for selection in selections:
        if isinstance(selection, str):
            parts = selection.split("/_history/")[0].rstrip("/").split("/")
            if parts[-2:] == wanted:
                return True
    return False


def order_texts(concept: Any) -> list[str]:
    """code.text and every coding display: what a clinician reads as the order's name."""
    texts = [concept.get("text")] if isinstance(concept, dict) else []
    texts += [c.get("display") for c in iter_codings(concept)]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _first_class(text: str, groups: Any) -> str | None:
    for name, patterns in groups:
        if any(p.search(text) for p in patterns):
            return name
    return None


def classify_text(text: str, knowledge: Knowledge) -> tuple[str, str | None] | None:
    """(modality, contrast) when *text* plainly names lumbar imaging, else None."""
    rules = knowledge.imaging_text
    if any(p.search(text) for p in rules.excluded) or not any(p.search(text) for p in rules.lumbar):
        return None
    modality = _first_class(text, rules.modality)
    if modality is None:
        return None
    return modality, (_first_class(text, rules.contrast) if modality != "xr" else None)


def classify_order(order: dict[str, Any], knowledge: Knowledge) -> ImagingOrder | None:
    """The order as lumbar imaging (codes first, then its text), or None when it is not lumbar imaging."""
    concept = order.get("code")
    texts = order_texts(concept)
    display = concept_text(concept) or ""
    rules = knowledge.imaging_text
    sacroiliac = knowledge.match("sij-imaging", concept) is not None or any(
        p.search(t) for t in texts for p in rules.sacroiliac
    )
    for modality, vs_id in MODALITIES:
        coding = knowledge.match(vs_id, concept)
        if coding:
            contrast = next((c for c, cvs in CONTRASTS if knowledge.match(cvs, concept)), None)
            if contrast is None and modality != "xr":  # a coded study without contrast codes: read its text
                contrast = next((found[1] for t in texts if (found := classify_text(t, knowledge))), None)
            return ImagingOrder(
                order, reference_of(order), display or modality.upper(), modality, coding, contrast, False, sacroiliac
            )
    for text in texts:
        found = classify_text(text, knowledge)
        if found:
            return ImagingOrder(order, reference_of(order), text, found[0], None, found[1], True, sacroiliac)
    return None


def lumbar_imaging_orders(record: PatientRecord, knowledge: Knowledge, hook: str) -> list[ImagingOrder]:
    """The draft lumbar imaging ServiceRequests this hook is about (order-select: only the selections)."""
    found: list[ImagingOrder] = []
    for entry in record.draft_orders:
        order = _unwrap(entry)
        if not order or order.get("resourceType") != "ServiceRequest":
            continue
        if order.get("status") is not None and order.get("status") not in OPEN_ORDER_STATUSES:
            continue
        if hook == "order-select" and not _selected(order, record.selections):
            continue
        imaging = classify_order(order, knowledge)
        if imaging is not None:
            found.append(imaging)
    return found


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


# ACR Appropriateness Criteria Low Back Pain (revised 2021): the studies a variant rates "usually appropriate"
# as initial imaging, in the order the service prefers when it suggests a replacement.
#   variant 7, suspicion of cancer, infection or immunosuppression: MRI without and with IV contrast, MRI
#   without IV contrast; variant 6, low-velocity trauma / osteoporosis / elderly / chronic steroid use:
#   radiograph, MRI without IV contrast, CT without IV contrast; variant 3, surgery or intervention candidate
#   (imaging step 5): MRI without IV contrast. A severe or progressive neurological deficit has no 2021
#   variant of its own: MRI without contrast (clinical rules section 2). See docs/clinical-logic.md.
ACCEPTABLE_STUDIES: dict[str, tuple[str, ...]] = {
    "neurological-deficit": ("mri-without-contrast",),
    "malignancy": ("mri-without-and-with-contrast", "mri-without-contrast"),
    "infection": ("mri-without-and-with-contrast", "mri-without-contrast"),
    "fracture": ("xr", "mri-without-contrast", "ct-without-contrast"),
    "radicular": ("mri-without-contrast",),
}
CATEGORY_PRIORITY = ("neurological-deficit", "malignancy", "infection", "fracture", "radicular")


def _accepts(study: str, order: ImagingOrder) -> bool:
    """Does the ordered study count as *study*? A CT or MRI whose contrast is not specified counts as the
    preferred protocol of its modality (the protocol is then the radiologist's choice)."""
    modality = study.split("-", 1)[0]
    if order.modality != modality:
        return False
    return study == modality or order.contrast is None or study == order.study


def preferred_study(categories: list[str], order: ImagingOrder) -> str | None:
    """None when the ordered study is usually appropriate for every category present; else the study to
    order instead: the first study of the highest-priority category that every category accepts."""
    present = [c for c in CATEGORY_PRIORITY if c in categories]
    if not present:
        return None
    if all(any(_accepts(s, order) for s in ACCEPTABLE_STUDIES[c]) for c in present):
        return None
    common = [s for s in ACCEPTABLE_STUDIES[present[0]] if all(s in ACCEPTABLE_STUDIES[c] for c in present)]
    return (common or list(ACCEPTABLE_STUDIES[present[0]]))[0]
