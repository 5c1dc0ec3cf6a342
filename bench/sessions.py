"""W5, W6 and the repeated body: request sequences shaped like the CDS Hooks sandbox's traffic.

The official CDS Hooks sandbox (github.com/cds-hooks/sandbox, src/retrieve-data-helpers/
service-exchange.js and src/components/Pama/pama.jsx, read for its request shape only) sends, per
call: a fresh random ``hookInstance``, ``fhirServer``, ``fhirAuthorization`` only when it holds a
token (an open server: none), ``context`` with ``patientId`` and ``userId`` plus the hook's own
context, and a full ``prefetch`` it fetched itself. Its order-select screen re-sends order-select
every time the order changes (study chosen, each reason added): the same prefetch with a growing
``draftOrders`` Bundle (no ``type``). The bodies here are built from the fixture patients
(``cds_service.tooling.fixtures``: build_request / prefetch_for), in that shape.

* **W5, an ordering session** per fixture patient with a selected order: patient-view; order-select
  three times (1: the first selected order with no reason yet, 2: the same order complete,
  3: every draft order of the fixture with the fixture's selections); order-sign with every order.
* **W6, nothing repeats**: every fixture body (patient-view of every patient, order-select and
  order-sign of those with orders) in rotation, each request a different patient.
* **Repeated body**: one order-select body posted again and again (bench/lua/post.lua).

Distinct patients without a chart per request: every occurrence of the patient id in a body (the
Patient, ``context.patientId``, every ``Patient/<id>`` reference and fullUrl) is written as
``<id>-@@P@@``, and ``hookInstance`` as ``@@H@@``; bench/lua/sessions.lua replaces ``@@P@@`` with a
suffix unique to the session (W5) or to the request (W6) and ``@@H@@`` with a fresh identifier per
request. The rules never read the id, so the expected cards stay the fixture's (checked before every
load, with a sample suffix).
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from cds_service.tooling.fixtures import (
    EXAMPLE_FHIR_SERVER,
    EXAMPLE_USER,
    LoadedFixture,
    load_manifest,
    prefetch_for,
    service_templates,
)

PATIENT_MARK = "@@P@@"
HOOK_INSTANCE_MARK = "@@H@@"
SESSION_LENGTH = 5  # patient-view, order-select x3, order-sign
REPEATED_FIXTURE = "acute-nonspecific-mri-2wk"  # the repository's order-select example patient


@dataclass(frozen=True)
class Body:
    """One request body with its placeholders, the endpoint it goes to and the cards it must get."""

    name: str  # "<slug> <hook> <step>"
    service_id: str
    hook: str
    raw: bytes  # JSON with PATIENT_MARK / HOOK_INSTANCE_MARK placeholders
    expected: list[str] | None  # sorted topics; None where the fixture declares no expectation (W5 step 1)

    @property
    def path(self) -> str:
        return f"/cds-services/{self.service_id}"

    def concrete(self, suffix: str = "check0", hook_instance: str | None = None) -> bytes:
        """The body as one request sends it (for the checks before the load)."""
        return self.raw.replace(PATIENT_MARK.encode(), suffix.encode()).replace(
            HOOK_INSTANCE_MARK.encode(), (hook_instance or str(uuid.uuid4())).encode())


def _checkable(spec: Any, expected: list[str] | None) -> list[str] | None:
    """The fixture's expectation, or None where it needs a FHIR server the benchmark does not run: the
    complete fever window (rev 2) fetches readings older than the prefetch's latest 50. Those bodies
    are still sent (an EHR sends them), their answers only not compared with the expectation."""
    if any("fever window" in branch or "latest 50" in branch for branch in spec.branches):
        return None
    return expected


def _order_context(orders: list[dict[str, Any]], selections: list[str] | None) -> dict[str, Any]:
    context: dict[str, Any] = {"draftOrders": {"resourceType": "Bundle",
                                               "entry": [{"resource": copy.deepcopy(o)} for o in orders]}}
    if selections is not None:
        context["selections"] = selections
    return context


def _body(fixture: LoadedFixture, hook: str, templates: dict[str, str], extra: dict[str, Any]) -> bytes:
    """The sandbox's envelope around the fixture's prefetch, with the patient id marked."""
    pid = fixture.patient_id
    context: dict[str, Any] = {"userId": EXAMPLE_USER, "patientId": pid, **extra}
    body = {"hookInstance": HOOK_INSTANCE_MARK, "hook": hook, "fhirServer": EXAMPLE_FHIR_SERVER,
            "context": context, "prefetch": prefetch_for(fixture.resources, templates, context)}
    text = orjson.dumps(body).decode()
    # every occurrence of the id as a whole JSON value or the tail of a reference / fullUrl / query
    marked = re.sub(rf'(?<=["/=]){re.escape(pid)}(?=["&])', f"{pid}-{PATIENT_MARK}", text)
    return marked.encode()


def _ref(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def session_bodies(fixture: LoadedFixture, templates: dict[str, dict[str, str]]) -> list[Body]:
    """The five bodies of one W5 ordering session on *fixture* (which has a selected order)."""
    from cds_service.registry import SERVICE_IDS

    spec = fixture.spec
    orders = fixture.orders
    first = next(o for o in orders if _ref(o) in spec.selected)
    unreasoned = {k: v for k, v in first.items() if k not in ("reasonCode", "reasonReference")}
    slug = spec.slug
    steps = [
        ("patient-view", "patient-view", {}, spec.expected("patient-view")),
        ("order-select", "order-select 1 (order, no reason yet)", _order_context([unreasoned], [_ref(first)]), None),
        ("order-select", "order-select 2 (order complete)", _order_context([first], [_ref(first)]),
         spec.expected("order-select", [_ref(first)])),
        ("order-select", "order-select 3 (every draft order)", _order_context(orders, list(spec.selected)),
         spec.expected("order-select")),
        ("order-sign", "order-sign", _order_context(orders, None), spec.expected("order-sign")),
    ]
    return [Body(f"{slug} {label}", SERVICE_IDS[hook], hook, _body(fixture, hook, templates[hook], extra),
                 _checkable(spec, expected))
            for hook, label, extra, expected in steps]


def w5_bodies(today: date | None = None) -> list[Body]:
    """Every W5 session, in session order (SESSION_LENGTH bodies per fixture patient with an order)."""
    templates = service_templates()
    out: list[Body] = []
    for spec in load_manifest().fixtures:
        if spec.selected:
            out.extend(session_bodies(spec.load(shift_to=today or date.today()), templates))
    return out


def w6_bodies(today: date | None = None) -> list[Body]:
    """Every fixture body once: patient-view of each patient, order-select and order-sign of those with orders."""
    from cds_service.registry import SERVICE_IDS

    templates = service_templates()
    out: list[Body] = []
    for spec in load_manifest().fixtures:
        fixture = spec.load(shift_to=today or date.today())
        out.append(Body(f"{spec.slug} patient-view", SERVICE_IDS["patient-view"], "patient-view",
                        _body(fixture, "patient-view", templates["patient-view"], {}),
                        _checkable(spec, spec.expected("patient-view"))))
        if spec.orders:
            selections = list(spec.selected) or [_ref(fixture.orders[0])]
            out.append(Body(f"{spec.slug} order-select", SERVICE_IDS["order-select"], "order-select",
                            _body(fixture, "order-select", templates["order-select"],
                                  _order_context(fixture.orders, selections)),
                            _checkable(spec, spec.expected("order-select", selections))))
            out.append(Body(f"{spec.slug} order-sign", SERVICE_IDS["order-sign"], "order-sign",
                            _body(fixture, "order-sign", templates["order-sign"],
                                  _order_context(fixture.orders, None)),
                            _checkable(spec, spec.expected("order-sign"))))
    return out


def repeated_body(today: date | None = None) -> Body:
    """One order-select body (W5 step 3 of the repository's order-select example patient), concrete."""
    bodies = session_bodies(load_manifest().get(REPEATED_FIXTURE).load(shift_to=today or date.today()),
                            service_templates())
    step3 = bodies[3]
    raw = step3.concrete("rep1", "5f0e8c52-7d3b-4c1e-9a55-2d6f4f0b7a11")
    return Body(f"{REPEATED_FIXTURE} order-select (one body repeated)", step3.service_id, step3.hook, raw,
                step3.expected)


def write_sequence(bodies: list[Body], directory: Path, name: str, floor: bool = False) -> Path:
    """The list file bench/lua/sessions.lua reads: one ``<path>\\t<body file>`` line per body, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, body in enumerate(bodies):
        path = directory / f"{name}-{index:04d}.json"
        if not path.exists():
            path.write_bytes(body.raw)
        lines.append(f"{'/_bench/floor' if floor else body.path}\t{path}")
    listing = directory / f"{name}{'-floor' if floor else ''}.list"
    listing.write_text("\n".join(lines) + "\n")
    return listing
