"""HTTP adapter of the CDS Hooks protocol: discovery, invocation and feedback endpoints.

Thin by design: it reads the body, hands it to the hook engine (``cds_service.engine``) with the
caller's authentication context, and turns the outcome into a response. Everything a hook answer
depends on lives in the engine, so the command line and the console get exactly the same answer.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from .engine import HookEngine
from .protocol import RequestError

bp = Blueprint("cds_hooks", __name__)


def engine() -> HookEngine:
    return current_app.extensions["cds"].engine


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


@bp.get("/cds-services")
def discovery() -> Response:
    return json_response(engine().discovery())


@bp.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    started = time.monotonic()
    hooks = engine()
    hooks.service(service_id)  # 404 before the body is read
    outcome = hooks.invoke(service_id, _read_json(), g.auth, deadline=started + hooks.runtime.settings.deadline_seconds)
    g.log_fields.update(outcome.log_fields)
    return json_response(outcome.body, outcome.status)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    hooks = engine()
    hooks.service(service_id)
    outcome = hooks.feedback(service_id, _read_json(), g.auth)
    g.log_fields.update(outcome.log_fields)
    headers = {"Retry-After": "5"} if outcome.status == 503 else None
    return json_response(outcome.body, outcome.status, headers)

