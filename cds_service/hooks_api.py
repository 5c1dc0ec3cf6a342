"""The CDS Hooks 2.0 protocol in one place: discovery, invocation and feedback endpoints."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from .clinical.model import EvaluationInput, PatientRecord
from .collector import COLLECTOR_PAUSE, LARGE_BODY_BYTES
from .metrics import CARDS_SERVED, FEEDBACK, PREFETCH_MISSING
from .prefetch import resolve
from .protocol import RequestError, validate_feedback, validate_request
from .runtime import Runtime
from .store import ServedCard, StoreUnavailable

log = logging.getLogger("cds_service.hooks")
bp = Blueprint("cds_hooks", __name__)




def runtime() -> Runtime:
    return current_app.extensions["cds"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)


def _read_json() -> Any:
    """Parse the body as JSON; 415 when it is not declared as JSON, 400 when it is not valid JSON."""
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise RequestError(415, "Content-Type must be application/json", "Content-Type", "unsupported-media-type")
    raw = request.get_data(cache=False)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 JSON: {exc.msg} at position {exc.pos}", "$",
                           "malformed-json") from exc


def _service(service_id: str):
    service = runtime().services.get(service_id)
    if service is None:
        raise RequestError(404, f"no CDS service with id {service_id!r}; see GET /cds-services", "id",
                           "unknown-service")
    return service


@bp.get("/cds-services")
def discovery() -> Response:
    return json_response({"services": [s.discovery() for s in runtime().services.values()]})


@bp.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    started = time.monotonic()
    large = (request.content_length or 0) >= LARGE_BODY_BYTES
    with COLLECTOR_PAUSE if large else nullcontext():
        return _invoke(service_id, started)


def _invoke(service_id: str, started: float) -> Response:
    rt = runtime()
    service = _service(service_id)
    body = _read_json()
    validate_request(body, service.hook)
    g.log_fields.update(service=service.id, hook=service.hook, hook_instance=body["hookInstance"])

    context = body["context"]
    allowlist = g.auth.fhir_allowlist if g.auth and g.auth.fhir_allowlist else rt.settings.fhir_allowlist
    resolved = resolve(
        service.prefetch,
        body,
        rt.fhir,
        allowlist,
        deadline=started + rt.settings.deadline_seconds,
        allow_open_servers=rt.settings.allow_open_fhir_servers,
        follow_paging={key: key not in service.first_page_only for key in service.prefetch},
    )
    for missing in resolved.missing:
        PREFETCH_MISSING.labels(missing.key).inc()
    if resolved.missing and rt.settings.on_missing_data == "412":
        g.log_fields.update(missing_keys=[m.key for m in resolved.missing])
        return json_response(
            {
                "error": "prefetch-unavailable",
                "message": "required FHIR data is neither in prefetch nor obtainable from the FHIR server",
                "missing": [m.as_json() for m in resolved.missing],
            },
            412,
        )

    record = PatientRecord(
        patient_id=context["patientId"],
        patient=resolved.patient(),
        resources=tuple(resolved.all_resources()),
        draft_orders=tuple(
            entry["resource"] for entry in (context.get("draftOrders") or {}).get("entry", [])
        ),
        selections=tuple(context.get("selections", ())),
        encounter_id=context.get("encounterId"),
        user_id=context.get("userId"),
        missing=tuple(m.key for m in resolved.missing),
    )
    now = datetime.now(UTC)
    decisions = service.evaluate(EvaluationInput(hook=service.hook, record=record, now=now))
    cards = [rt.catalog.render(decision, record) for decision in decisions]

    served = [
        ServedCard(
            card_uuid=card["uuid"],
            service_id=service.id,
            hook=service.hook,
            hook_instance=body["hookInstance"],
            topic=card["source"]["topic"]["code"],
            indicator=card["indicator"],
            suggestion_uuids=tuple(s["uuid"] for s in card.get("suggestions", [])),
            order_reference=decision.order_reference,
            encounter_id=record.encounter_id,
        )
        for decision, card in zip(decisions, cards, strict=True)
    ]
    try:
        rt.store.record_served(served, record.patient_id, now, issuer=g.auth.issuer if g.auth else None,
                               tenant=g.auth.tenant if g.auth else None)
    except StoreUnavailable:
        # Cards need no database: the clinician still gets them; only analytics lose this row.
        log.warning(
            "served cards not recorded: database unavailable", extra={"card_ids": [c.card_uuid for c in served]}
        )
    for card in served:
        CARDS_SERVED.labels(service.id, card.topic).inc()
    g.log_fields.update(
        card_topics=[c.topic for c in served],
        card_ids=[c.card_uuid for c in served],
        fetched_keys=resolved.fetched_keys,
        missing_keys=[m.key for m in resolved.missing],
    )
    return json_response({"cards": cards})


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    service = _service(service_id)
    body = _read_json()
    validate_feedback(body)
    g.log_fields.update(service=service.id, card_ids=[item["card"] for item in body["feedback"]])
    try:
        stored = rt.store.record_feedback(service.id, body["feedback"], datetime.now(UTC),
                                          issuer=g.auth.issuer if g.auth else None,
                                          tenant=g.auth.tenant if g.auth else None)
    except StoreUnavailable:
        return json_response(
            {"error": "store-unavailable", "message": "feedback could not be stored; retry later"},
            503,
            {"Retry-After": "5"},
        )
    for item, ack in zip(body["feedback"], stored, strict=True):
        FEEDBACK.labels(service.id, item["outcome"], ack.get("flag", "none")).inc()
    return json_response({"feedback": stored})


def new_request_id() -> str:
    incoming = request.headers.get("X-Request-ID", "")
    if 0 < len(incoming) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in incoming):
        return incoming
    return uuid.uuid4().hex
