"""Building CDS Hooks requests for the card preview: fixture patients, pasted Bundles, draft orders.

The preview must show exactly what an EHR would get, so this module only *builds the request*
(context + full prefetch from the discovery templates, via ``cds_service.tooling.fixtures.prefetch_for``);
the browser then sends it to the real ``POST /cds-services/{id}`` endpoint.

Pasted or uploaded Bundles are processed in memory for one request and never stored or logged.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from cds_service.clinical.dates import completed_years
from cds_service.tooling.fixtures import FixtureSpec, LoadedFixture, Manifest, load_manifest, prefetch_for

HOOKS = ("patient-view", "order-select", "order-sign")
ORDER_HOOKS = ("order-select", "order-sign")
CONSOLE_USER = "Practitioner/console-informaticist"
MAX_BUNDLE_ENTRIES = 5000
MAX_ORDERS = 20

CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
IMAGING_CATEGORY = {"coding": [{"system": SNOMED, "code": "363679005", "display": "Imaging"}]}

#: Draft imaging orders an informaticist can compose (CPT codes from the lumbar and SI-joint value sets).
ORDER_PRESETS: dict[str, dict[str, str]] = {
    "xr-lumbar": {"code": "72100", "display": "XR lumbosacral spine, 2 or 3 views"},
    "ct-lumbar": {"code": "72131", "display": "CT lumbar spine without contrast"},
    "mri-lumbar": {"code": "72148", "display": "MRI lumbar spine without contrast"},
    "mri-lumbar-contrast": {"code": "72158", "display": "MRI lumbar spine without and with contrast"},
    "xr-sij": {"code": "72202", "display": "XR sacroiliac joints, 3 or more views"},
    "mri-pelvis": {"code": "72195", "display": "MRI pelvis (sacroiliac joints) without contrast"},
}
#: Reasons a composed order can carry (the imaging rules read the order's reasonCode).
ORDER_REASONS: dict[str, dict[str, str] | None] = {
    "low-back-pain": {"system": SNOMED, "code": "279039007", "display": "Low back pain"},
    "sciatica": {"system": SNOMED, "code": "23056005", "display": "Sciatica"},
    "none": None,
}


class ConsoleInputError(ValueError):
    """Bad input from the console page; answered 400 with this message (naming the field)."""

    def __init__(self, message: str, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass
class PatientSource:
    """The patient data a preview runs on: a fixture or a pasted Bundle (in memory only)."""

    label: str
    resources: list[dict[str, Any]]
    orders: list[dict[str, Any]]  # draft ServiceRequests the source brings (fixture manifest or Bundle)
    spec: FixtureSpec | None = None

    @property
    def patient(self) -> dict[str, Any]:
        return next(r for r in self.resources if r.get("resourceType") == "Patient")

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def read_manifest(fixtures_dir: Path) -> Manifest | None:
    """The fixture manifest, or None when the directory has none (an installed package)."""
    if not (fixtures_dir / "manifest.yaml").exists():
        return None
    return load_manifest(fixtures_dir)


def order_display(order: Mapping[str, Any]) -> str:
    code = order.get("code") or {}
    if isinstance(code, Mapping):
        if code.get("text"):
            return str(code["text"])
        for coding in code.get("coding") or []:
            if isinstance(coding, Mapping) and coding.get("display"):
                return str(coding["display"])
            if isinstance(coding, Mapping) and coding.get("code"):
                return f"{coding.get('system', '')}|{coding['code']}"
    return f"ServiceRequest/{order.get('id', '?')}"


def reference(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def patient_summary(patient: Mapping[str, Any], today: date) -> dict[str, Any]:
    """Name, sex and age for the page header (fixture data only; shown as text, never as HTML)."""
    name = ""
    names = patient.get("name")
    if isinstance(names, list) and names and isinstance(names[0], Mapping):
        first = names[0]
        if first.get("text"):
            name = str(first["text"])
        else:
            given = " ".join(str(g) for g in first.get("given") or [] if isinstance(g, str))
            name = " ".join(part for part in (given, str(first.get("family") or "")) if part)
    age = None
    birth = patient.get("birthDate")
    if isinstance(birth, str):
        try:
            age = completed_years(date.fromisoformat(birth[:10]), today)
        except ValueError:
            age = None
    return {
        "id": str(patient.get("id", "")),
        "name": name or "(no name)",
        "gender": str(patient.get("gender") or "unknown"),
        "birthDate": birth if isinstance(birth, str) else None,
        "age": age,
    }


def fixture_listing(manifest: Manifest, today: date) -> list[dict[str, Any]]:
    """Every fixture with what the page needs to pick it: summary, draft orders, expectations."""
    out = []
    for spec in manifest.fixtures:
        loaded = spec.load(today)
        out.append(
            {
                "slug": spec.slug,
                "description": spec.description,
                "patient": patient_summary(loaded.patient, today),
                "orders": [
                    {"reference": reference(order), "display": order_display(order), "expect": list(o.expect)}
                    for order, o in zip(loaded.orders, spec.orders, strict=True)
                ],
                "selected": list(spec.selected),
                "expected": {hook: spec.expected(hook) for hook in HOOKS},
            }
        )
    return out


def fixture_source(manifest: Manifest | None, slug: Any, today: date) -> PatientSource:
    if manifest is None:
        raise ConsoleInputError("no fixtures are installed here: paste a Bundle instead", "fixture", 404)
    if not isinstance(slug, str):
        raise ConsoleInputError("fixture must be a fixture slug (string)", "fixture")
    try:
        spec = manifest.get(slug)
    except KeyError as exc:
        raise ConsoleInputError(f"no fixture named {slug!r}", "fixture", 404) from exc
    loaded: LoadedFixture = spec.load(today)
    return PatientSource(label=spec.slug, resources=loaded.resources, orders=loaded.orders, spec=spec)


# --------------------------------------------------------------------------------------------
# Pasted / uploaded Bundles
# --------------------------------------------------------------------------------------------


def _rewrite_references(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite_references(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite_references(v, mapping) for v in node]
    return node


def bundle_source(bundle: Any) -> PatientSource:
    """Resources of one patient's Bundle (any type: transaction, collection, searchset).

    Entries identified only by ``urn:uuid:`` fullUrls (Synthea style) get that uuid as their id and
    references to them are rewritten to ``Type/id``, so prefetch searches find them. Draft
    ServiceRequests become the draft orders of the order hooks, not part of the record.
    """
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise ConsoleInputError('the pasted JSON is not a FHIR Bundle (resourceType must be "Bundle")', "bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise ConsoleInputError("the Bundle has no entry", "bundle.entry")
    if len(entries) > MAX_BUNDLE_ENTRIES:
        raise ConsoleInputError(f"the Bundle has more than {MAX_BUNDLE_ENTRIES} entries", "bundle.entry")
    resources: list[dict[str, Any]] = []
    mapping: dict[str, str] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
            raise ConsoleInputError(f"entry[{index}] has no resource with a resourceType", f"bundle.entry[{index}]")
        resource = copy.deepcopy(dict(resource))
        full_url = entry.get("fullUrl") if isinstance(entry, Mapping) else None
        if not resource.get("id"):
            if isinstance(full_url, str) and full_url:
                resource["id"] = full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
            else:
                resource["id"] = f"pasted-{index}"
        if isinstance(full_url, str) and full_url:
            mapping[full_url] = reference(resource)
        resources.append(resource)
    if mapping:
        resources = [_rewrite_references(r, mapping) for r in resources]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    if len(patients) != 1:
        raise ConsoleInputError(f"the Bundle must hold exactly one Patient (found {len(patients)})", "bundle.entry")
    orders = [r for r in resources if r["resourceType"] == "ServiceRequest" and r.get("status") == "draft"]
    record = [r for r in resources if not (r["resourceType"] == "ServiceRequest" and r.get("status") == "draft")]
    return PatientSource(label="pasted Bundle", resources=record, orders=orders[:MAX_ORDERS])


def bundle_listing(source: PatientSource, today: date) -> dict[str, Any]:
    """What the page shows for a pasted Bundle before running it."""
    counts: dict[str, int] = {}
    for resource in source.resources:
        counts[resource["resourceType"]] = counts.get(resource["resourceType"], 0) + 1
    return {
        "patient": patient_summary(source.patient, today),
        "resourceCounts": dict(sorted(counts.items())),
        "orders": [{"reference": reference(o), "display": order_display(o), "expect": None} for o in source.orders],
        "selected": [reference(o) for o in source.orders],
    }


# --------------------------------------------------------------------------------------------
# Draft orders and the request
# --------------------------------------------------------------------------------------------


def compose_order(preset: Any, reason: Any, patient_id: str, index: int, today: date) -> dict[str, Any]:
    """A draft imaging ServiceRequest from one of the presets."""
    if preset not in ORDER_PRESETS:
        raise ConsoleInputError(
            f"unknown order preset {preset!r}; one of {', '.join(ORDER_PRESETS)}", f"orders[{index}].preset"
        )
    if reason not in ORDER_REASONS:
        raise ConsoleInputError(
            f"unknown order reason {reason!r}; one of {', '.join(ORDER_REASONS)}", f"orders[{index}].reason"
        )
    item = ORDER_PRESETS[preset]
    order: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": f"console-order-{index + 1}",
        "status": "draft",
        "intent": "order",
        "category": [copy.deepcopy(IMAGING_CATEGORY)],
        "code": {
            "coding": [{"system": CPT, "code": item["code"], "display": item["display"]}],
            "text": item["display"],
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today.isoformat(),
    }
    coding = ORDER_REASONS[reason]
    if coding:
        order["reasonCode"] = [{"coding": [dict(coding)], "text": coding["display"]}]
    return order


@dataclass
class BuiltRequest:
    service_id: str
    request: dict[str, Any]
    expected: list[str] | None  # None: no expectation (pasted Bundle or composed orders)


def choose_orders(source: PatientSource, raw_orders: Any, today: date) -> tuple[list[dict[str, Any]], list[str], bool]:
    """Draft orders, selections and whether any order was composed, from the page's ``orders`` list.

    Each item is either ``{"reference": "ServiceRequest/<id>", "selected": bool}`` (an order the
    fixture or Bundle brings) or ``{"preset": "mri-lumbar", "reason": "low-back-pain", "selected": bool}``.
    """
    if raw_orders is None:
        raw_orders = [{"reference": reference(o), "selected": True} for o in source.orders]
    if not isinstance(raw_orders, list):
        raise ConsoleInputError("orders must be a list", "orders")
    if len(raw_orders) > MAX_ORDERS:
        raise ConsoleInputError(f"at most {MAX_ORDERS} draft orders", "orders")
    known = {reference(o): o for o in source.orders}
    orders: list[dict[str, Any]] = []
    selections: list[str] = []
    composed = False
    for index, item in enumerate(raw_orders):
        if not isinstance(item, Mapping):
            raise ConsoleInputError("each order must be an object", f"orders[{index}]")
        if "reference" in item:
            order = known.get(item["reference"]) if isinstance(item["reference"], str) else None
            if order is None:
                raise ConsoleInputError(
                    f"{item['reference']!r} is not one of this patient's draft orders", f"orders[{index}].reference"
                )
            order = copy.deepcopy(order)
        else:
            order = compose_order(
                item.get("preset"), item.get("reason", "low-back-pain"), source.patient_id, index, today
            )
            composed = True
        orders.append(order)
        if item.get("selected", True):
            selections.append(reference(order))
    return orders, selections, composed


def build_request(
    source: PatientSource,
    hook: Any,
    services: Mapping[str, Mapping[str, Any]],
    raw_orders: Any,
    today: date,
) -> BuiltRequest:
    """The CDS Hooks request an EHR would send: context plus the full prefetch, from discovery templates.

    *services* maps hook → the service's discovery entry (id and prefetch templates).
    """
    if hook not in HOOKS:
        raise ConsoleInputError(f"hook must be one of {', '.join(HOOKS)}", "hook")
    service = services.get(hook)
    if service is None:
        raise ConsoleInputError(f"no service of this CDS service answers {hook}", "hook", 404)
    context: dict[str, Any] = {"userId": CONSOLE_USER, "patientId": source.patient_id}
    selections: list[str] = []
    composed = False
    if hook in ORDER_HOOKS:
        orders, selections, composed = choose_orders(source, raw_orders, today)
        if not orders:
            raise ConsoleInputError("order hooks need at least one draft order: pick or compose one", "orders")
        if hook == "order-select" and not selections:
            raise ConsoleInputError("order-select needs at least one selected order", "orders")
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        }
        if hook == "order-select":
            context["selections"] = selections
    request = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch_for(source.resources, service.get("prefetch") or {}, context),
    }
    expected = None
    if source.spec is not None and not composed:
        expected = source.spec.expected(hook, selections if hook == "order-select" else None)
    return BuiltRequest(service_id=str(service["id"]), request=request, expected=expected)


def services_by_hook(discovery: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """hook → discovery entry (the first service answering that hook)."""
    out: dict[str, Mapping[str, Any]] = {}
    for service in discovery:
        out.setdefault(str(service["hook"]), service)
    return out
