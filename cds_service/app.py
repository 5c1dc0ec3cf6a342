"""Flask application factory: wiring, error handling, CORS and security headers.

Nothing a client sends may produce a stack trace: every error leaves as JSON with a message that
names the problem, and unexpected exceptions become a 500 that carries only the request id.
"""

from __future__ import annotations

import hmac
import logging
import time
from importlib import resources

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from .auth import AuthError, AuthUnavailable
from .hooks_api import bp as hooks_bp
from .hooks_api import json_response
from .logging_setup import configure_logging
from .metrics import REQUEST_LATENCY, exposition
from .protocol import RequestError
from .request_ids import request_id
from .runtime import Runtime
from .settings import Settings

try:  # the production server's errors for a body it cannot decode (e.g. a malformed chunk size)
    from gunicorn.http.errors import ParseException as BodyReadError
except ImportError:  # pragma: no cover - gunicorn is a dependency; keep the app importable without it

    class BodyReadError(Exception):  # type: ignore[no-redef]
        """Placeholder: never raised."""


log = logging.getLogger("cds_service.http")
PROTECTED_PREFIX = "/cds-services"
#: Operator endpoints: Prometheus metrics and the console's API (each review call runs ~200 hook
#: evaluations). They need CDS_OPS_TOKEN as a Bearer token; in production they are closed without it.
OPS_PATHS = ("/metrics", "/console/api/")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def create_app(settings: Settings | None = None) -> Flask:
    settings = (settings or Settings.from_env()).validate()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    rt = Runtime.build(settings)
    app.extensions["cds"] = rt
    if settings.effective_auth_mode != "off" and not settings.public_base_url:
        # The expected JWT `aud` is then built from the Host header the client sends: a token minted
        # for another CDS service could be presented here with that service's host name.
        log.warning(
            "CDS_PUBLIC_BASE_URL is not set: the JWT audience is checked against the request's Host header; "
            "set it to the URL the EHRs call",
            extra={"check": "aud"},
        )
    app.register_blueprint(hooks_bp)
    _register_operational_routes(app, rt)
    if settings.effective_console_enabled:
        from .tooling.console import bp as console_bp

        app.register_blueprint(console_bp)
    from .smart.blueprint import init_app as init_smart_app  # the assessment app under /smart/ (issue 14)

    init_smart_app(app, settings)

    @app.before_request
    def start_request() -> Response | None:
        g.request_id = request_id(request.headers.get("X-Request-ID"))
        g.started = time.monotonic()
        g.log_fields = {}
        g.auth = None
        if request.method == "OPTIONS":
            return _preflight(settings)
        # The matched route decides (other spellings are redirected or 404 by routing; an endpoint that
        # is not registered, e.g. the console when it is off, stays a 404).
        rule = request.url_rule.rule if request.url_rule else ""
        if rule == OPS_PATHS[0] or rule.startswith(OPS_PATHS[1]):
            refused = _ops_refusal(settings)
            if refused is not None:
                return refused
        if request.path.startswith(PROTECTED_PREFIX):
            g.auth = rt.authenticator.authenticate(request.headers.get("Authorization"), _called_url(settings))
        _enforce_streamed_body_limit(settings)
        return None

    @app.after_request
    def finish_request(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", API_CSP)
        if request.path.startswith(PROTECTED_PREFIX):
            response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        _cors_headers(settings, response)
        duration = (time.monotonic() - getattr(g, "started", time.monotonic())) * 1000
        rule = request.url_rule.rule if request.url_rule else "other"
        endpoint = getattr(g, "log_fields", {}).get("service") or rule
        REQUEST_LATENCY.labels(endpoint, str(response.status_code)).observe(duration / 1000)
        log.info(
            "request",
            extra={
                "request_id": getattr(g, "request_id", None),
                "method": request.method,
                "path": request.url_rule.rule if request.url_rule else "(unmatched)",
                "status": response.status_code,
                "duration_ms": round(duration, 1),
                **getattr(g, "log_fields", {}),
            },
        )
        return response

    @app.errorhandler(RequestError)
    def request_error(error: RequestError) -> Response:
        g.log_fields = {**getattr(g, "log_fields", {}), "error": error.error, "field": error.field}
        return json_response(error.body(), error.status)

    @app.errorhandler(AuthError)
    def auth_error(error: AuthError) -> Response:
        g.log_fields = {**getattr(g, "log_fields", {}), "error": "unauthorized", "check": error.check}
        return json_response(
            {"error": "unauthorized", "message": error.reason}, 401, {"WWW-Authenticate": 'Bearer realm="cds-hooks"'}
        )

    @app.errorhandler(AuthUnavailable)
    def auth_unavailable(_error: AuthUnavailable) -> Response:
        # The jti replay check needs the database; failing closed beats accepting a possible replay.
        g.log_fields = {**getattr(g, "log_fields", {}), "error": "auth-unavailable"}
        return json_response(
            {"error": "auth-unavailable", "message": "token replay check unavailable; retry later"},
            503,
            {"Retry-After": "5"},
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        messages = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            413: f"request body exceeds the limit of {settings.max_request_bytes} bytes",
        }
        status = error.code or 500
        body = {"error": error.name.lower().replace(" ", "-"), "message": messages.get(status, error.name)}
        return json_response(body, status)

    @app.errorhandler(BodyReadError)
    def body_read_error(_error: Exception) -> Response:
        # The server could not decode the body (gunicorn: malformed chunked transfer coding). It is
        # raised inside the app when the body is read; the client's fault, not a bug: 400, not 500.
        g.log_fields = {**getattr(g, "log_fields", {}), "error": "malformed-body"}
        return json_response(
            {"error": "malformed-body", "message": "request body could not be read: invalid transfer encoding",
             "field": "$"},
            400,
        )

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # exc_info: the formatter keeps the type and the stack frames (file, line, function), never the
        # message, which may quote patient data.
        log.error(
            "unhandled error",
            exc_info=error,
            extra={"request_id": getattr(g, "request_id", None), "error_type": type(error).__name__},
        )
        return json_response(
            {"error": "internal-error", "message": "unexpected error; quote the request id to support",
             "requestId": getattr(g, "request_id", "")},
            500,
        )

    return app


def _enforce_streamed_body_limit(settings: Settings) -> None:
    """413 for a chunked body over CDS_MAX_REQUEST_BYTES, as for one with a Content-Length.

    Without Content-Length, Werkzeug reads a streamed body (``wsgi.input_terminated``, as gunicorn
    sets it) only up to the limit and stops there without an error, so an oversized body would be
    parsed truncated and answered 400 "unexpected end of data". Reading it once here (cached for the
    handler) and probing one byte past the limit raises RequestEntityTooLarge instead.
    """
    if request.method != "POST" or request.content_length is not None:
        return
    if not request.environ.get("wsgi.input_terminated"):
        return
    if len(request.get_data(cache=True)) >= settings.max_request_bytes:
        request.stream.read(1)  # the limit is exhausted: raises RequestEntityTooLarge (413)


def _ops_refusal(settings: Settings) -> Response | None:
    """401/403 JSON unless the request carries the operator token (CDS_OPS_TOKEN) as a Bearer token.

    Without a configured token the operator endpoints are open in development and closed in
    production. The comparison is constant-time; the token is never logged.
    """
    expected = settings.ops_token
    if not expected:
        if settings.environment == "development":
            return None
        g.log_fields = {**g.log_fields, "error": "ops-token-not-configured"}
        return json_response(
            {"error": "forbidden", "message": "operator endpoint: set CDS_OPS_TOKEN to enable it in production"},
            403,
        )
    scheme, _, presented = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected.encode()):
        return None
    g.log_fields = {**g.log_fields, "error": "unauthorized", "check": "ops-token"}
    return json_response(
        {"error": "unauthorized", "message": "operator endpoint: send Authorization: Bearer <CDS_OPS_TOKEN>"},
        401,
        {"WWW-Authenticate": 'Bearer realm="cds-ops"'},
    )


def _called_url(settings: Settings) -> str:
    """The URL the client called, as the JWT `aud` must state it (public base URL behind a proxy)."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + request.path
    return request.base_url


def _origin_allowed(settings: Settings, origin: str | None) -> bool:
    if not origin:
        return False
    if "*" in settings.cors_origins:
        return True
    if not settings.cors_origins and settings.environment == "development":
        return True
    return origin in settings.cors_origins


def _preflight(settings: Settings) -> Response:
    if not _origin_allowed(settings, request.headers.get("Origin")):
        return json_response(
            {"error": "origin-not-allowed", "message": "this origin may not call the service (CDS_CORS_ORIGINS)"},
            403,
        )
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body
    return response


def _cors_headers(settings: Settings, response: Response) -> None:
    origin = request.headers.get("Origin")
    response.vary.add("Origin")
    if not _origin_allowed(settings, origin):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "X-Request-ID"
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-ID"
        response.headers["Access-Control-Max-Age"] = "600"


def _register_operational_routes(app: Flask, rt: Runtime) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        if rt.store.ping():
            return json_response({"status": "ready", "database": "ok", "schema": rt.store.schema_status})
        database = "unreachable" if rt.store.schema_status in {"unreachable", "unknown"} else "schema-not-ready"
        return json_response({"status": "not-ready", "database": database, "schema": rt.store.schema_status}, 503)

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, content_type=content_type)

    if rt.settings.bench_floor:
        from .bench_floor import register_floor

        register_floor(app)

    contract = resources.files("cds_service").joinpath("openapi.yaml").read_bytes()  # read once

    @app.get("/openapi.yaml")
    def openapi() -> Response:
        return Response(contract, mimetype="application/yaml")
