"""The /smart/ routes: launch -> EHR authorize -> callback -> form -> save (docs/smart-app.md).

State lives in two encrypted cookies (sealed.py): `smart_auth` between launch and callback (state,
PKCE verifier, iss, endpoints; 10 minutes) and `smart_s_<id>` for the form (iss, patient, user,
access token, expiry). The service stores no answers: they go from the form to the EHR's FHIR
server in one request and are dropped. `iss` is checked against the FHIR allowlist before any
request is made to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request, url_for

from cds_service.settings import Settings
from cds_service.urls import url_allowed

from . import oauth, writeback
from .form import (
    FormError,
    build_form,
    build_response,
    load_questionnaire,
    new_information,
    parse_answers,
    submitted_values,
)
from .prefill import prefill, read_record
from .sealed import Sealer

log = logging.getLogger("cds_service.smart")

bp = Blueprint("smart", __name__, url_prefix="/smart", template_folder="templates", static_folder="static")

SMART_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id: it goes into search URLs and references
AUTH_COOKIE = "smart_auth"
SESSION_COOKIE = "smart_s_"
AUTH_SECONDS = 600
SESSION_SECONDS = 8 * 3600  # the access token's own expiry usually ends it sooner
DEFAULT_CLIENT_ID = "lbp-assessment"


@dataclass(frozen=True)
class SmartApp:
    settings: Settings
    client_id: str
    sealer: Sealer
    questionnaire: dict[str, Any]
    allowlist: tuple[str, ...]

    def client(self) -> oauth.ClientConfig:
        base = (self.settings.public_base_url or request.host_url).rstrip("/")
        return oauth.ClientConfig(self.client_id, f"{base}/smart/callback", self.settings.fhir_timeout_seconds)


def init_app(app: Flask, settings: Settings, environ: dict[str, str] | None = None) -> None:
    """Register /smart/ when the app can run: a shared secret (CDS_SMART_SECRET_KEY), or development,
    where one is made in the data directory."""
    env = os.environ if environ is None else environ
    secret = env.get("CDS_SMART_SECRET_KEY")
    if not secret:
        if settings.environment != "development":
            log.info("SMART app off: CDS_SMART_SECRET_KEY is not set")
            return
        secret = _development_secret(Path(settings.data_dir))
    rt = app.extensions["cds"]
    issuers = getattr(rt.authenticator, "issuers", None) or {}  # the issuers file's per-issuer FHIR allowlists
    issuer_lists = [getattr(i, "fhir_allowlist", None) or () for i in issuers.values()]
    allowlist = tuple(dict.fromkeys([*settings.fhir_allowlist, *(p for lst in issuer_lists for p in lst)]))
    app.extensions["cds_smart"] = SmartApp(
        settings=settings,
        client_id=env.get("CDS_SMART_CLIENT_ID") or DEFAULT_CLIENT_ID,
        sealer=Sealer(secret),
        questionnaire=load_questionnaire(),
        allowlist=allowlist,
    )
    app.register_blueprint(bp)


def _development_secret(data_dir: Path) -> str:
    """One secret for every worker of a development server (`make serve` runs several): made once in
    the data directory, readable by its owner only."""
    path = data_dir / "smart-secret.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker is writing it
            text = path.read_text().strip()
            if text:
                return text
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _smart() -> SmartApp:
    return current_app.extensions["cds_smart"]


@bp.after_request
def smart_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = SMART_CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("X-Robots-Tag", "noindex, nofollow")
    return response


def _message(title: str, text: str, status: int) -> Response:
    return Response(render_template("smart/message.html", title=title, text=text), status, mimetype="text/html")


def _set_cookie(response: Response, name: str, value: str, max_age: int, path: str) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, samesite="Lax", secure=request.is_secure
    )


# ------------------------------------------------------------------------------------------ launch


@bp.get("/launch")
def launch() -> Response:
    """EHR launch (iss + launch) or standalone launch (iss only)."""
    app = _smart()
    iss = (request.args.get("iss") or "").strip().rstrip("/")
    launch_id = request.args.get("launch") or None
    if not iss:
        return _message("No EHR given", "Open this app from your EHR (the launch needs the iss parameter).", 400)
    if not url_allowed(iss, app.allowlist):
        log.warning("smart launch refused: iss not allowlisted", extra={"check": "iss"})
        return _message("EHR not allowed", "This FHIR server is not one this service is configured to work with.", 403)
    try:
        config = oauth.discover(iss, app.settings.fhir_timeout_seconds)
    except oauth.LaunchError as exc:
        return _message("Cannot reach the EHR", exc.message, exc.status)
    state, verifier = oauth.state_token(), oauth.new_verifier()
    client = app.client()
    target = oauth.authorization_url(client, config, iss, launch_id, state, verifier)
    sealed = app.sealer.seal(
        {
            "state": state,
            "verifier": verifier,
            "iss": iss,
            "token_endpoint": config["token_endpoint"],
            "jwks_uri": config.get("jwks_uri"),
        }
    )
    response = redirect(target, 302)
    _set_cookie(response, AUTH_COOKIE, sealed, AUTH_SECONDS, "/smart/callback")
    return response


@bp.get("/callback")
def callback() -> Response:
    app = _smart()
    pending = app.sealer.unseal(request.cookies.get(AUTH_COOKIE), AUTH_SECONDS)
    if pending is None:
        return _message("Launch expired", "This sign-in took too long or was not started here. Launch again.", 400)
    if request.args.get("error"):
        return _message("Not authorized", f"The EHR did not authorize the app ({request.args['error'][:60]}).", 403)
    client = app.client()
    config = {"token_endpoint": pending["token_endpoint"], "jwks_uri": pending.get("jwks_uri")}
    try:
        token = oauth.exchange_code(client, config, request.url, pending["state"], pending["verifier"])
    except oauth.LaunchError as exc:
        return _message("Launch failed", exc.message, exc.status)
    patient = token.get("patient")
    if not isinstance(patient, str) or not FHIR_ID.fullmatch(patient):
        return _message("No patient", "The EHR did not say which patient this launch is for.", 400)
    asked: list[str] = []
    if isinstance(token.get("appContext"), str):
        try:
            context = json.loads(token["appContext"])
            asked = [str(x) for x in context.get("linkIds", [])][:50] if isinstance(context, dict) else []
        except ValueError:
            asked = []
    session_id = secrets.token_urlsafe(12)
    data = {
        "iss": pending["iss"],
        "patient": patient,
        "user": oauth.fhir_user(token, config, client.client_id, client.timeout),
        "token": token["access_token"],
        "exp": writeback.expires_at(token),
        "refresh": token.get("refresh_token"),
        "token_endpoint": pending["token_endpoint"],
        "asked": asked,
    }
    response = redirect(url_for("smart.form_page", s=session_id), 303)
    _set_cookie(response, SESSION_COOKIE + session_id, app.sealer.seal(data), SESSION_SECONDS, "/smart")
    response.delete_cookie(AUTH_COOKIE, path="/smart/callback")
    return response


# ------------------------------------------------------------------------------------------ the form


def _session() -> tuple[str, dict[str, Any] | None]:
    session_id = (request.values.get("s") or "")[:32]
    cookie = request.cookies.get(SESSION_COOKIE + session_id) if session_id else None
    return session_id, _smart().sealer.unseal(cookie, SESSION_SECONDS)


def _relative_user(user: str | None, iss: str) -> str | None:
    if user and user.startswith(iss + "/"):
        return user[len(iss) + 1 :]
    return user


def patient_banner(patient: dict[str, Any] | None) -> str:
    """Name, gender and birth date for the banner the EHR asks for (need_patient_banner)."""
    if not patient:
        return ""
    names = patient.get("name") or [{}]
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], dict) else {}
    text = name.get("text") or " ".join([*(name.get("given") or []), name.get("family") or ""]).strip()
    parts = [
        text or "Name not recorded",
        patient.get("gender"),
        f"born {patient['birthDate']}" if patient.get("birthDate") else None,
    ]
    return " · ".join(str(p) for p in parts if p)[:200]


def _render_form(
    session_id: str,
    data: dict[str, Any],
    submitted: dict[str, list[str]] | None,
    error: str | None,
    status: int = 200,
    read_note: str | None = None,
    prefilled: dict | None = None,
    banner: str | None = None,
) -> Response:
    app = _smart()
    asked, rest = build_form(app.questionnaire, submitted, prefilled or {}, data.get("asked") or [])
    html = render_template(
        "smart/form.html",
        title=app.questionnaire.get("title") or "Assessment",
        asked=asked,
        rest=rest,
        session_id=session_id,
        csrf=app.sealer.csrf_token(session_id),
        error=error,
        read_note=read_note,
        version=app.questionnaire.get("version"),
        banner=banner if banner is not None else str(request.form.get("banner") or "")[:200],
    )
    return Response(html, status, mimetype="text/html")


def _keep_session(response: Response, session_id: str, data: dict[str, Any]) -> Response:
    """Store the session again (after its token was renewed)."""
    _set_cookie(response, SESSION_COOKIE + session_id, _smart().sealer.seal(data), SESSION_SECONDS, "/smart")
    return response


@bp.get("/app")
def form_page() -> Response:
    session_id, data = _session()
    app = _smart()
    renewed = data is not None and writeback.expired(data)
    if renewed:
        data = writeback.renewed(data, app.client())
    if data is None:
        return _message("Session ended", "This launch has ended. Launch the app again from the EHR.", 401)
    rt = current_app.extensions["cds"]
    record, failed = read_record(
        rt.fhir,
        data["iss"],
        data["token"],
        data["patient"],
        rt.knowledge,
        app.allowlist,
        app.settings.deadline_seconds,
    )
    read_note = None
    if failed:
        read_note = "Part of the record could not be read, so fewer answers are pre-filled: " + ", ".join(
            f"{r.key} ({r.reason})" for r in failed
        )
    prefilled = prefill(record, rt.knowledge, datetime.now(UTC))
    response = _render_form(
        session_id, data, None, None, read_note=read_note, prefilled=prefilled, banner=patient_banner(record.patient)
    )
    return _keep_session(response, session_id, data) if renewed else response


def _same_site_post(app: SmartApp) -> bool:
    """Defence in depth beside the CSRF token: the browser's own word on where the POST came from.
    (Origin is "null" under Referrer-Policy: no-referrer, so Sec-Fetch-Site is read first.)"""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in {"same-origin", "none"}
    origin = (request.headers.get("Origin") or "null").rstrip("/")
    allowed = {request.host_url.rstrip("/"), (app.settings.public_base_url or "").rstrip("/")}
    return origin == "null" or origin in allowed


@bp.post("/save")
def save() -> Response:
    app = _smart()
    session_id, data = _session()
    if not _same_site_post(app):
        return _message("Refused", "This form was sent from another site.", 403)
    if data is None:
        return _message("Session ended", "This launch has ended. Launch the app again from the EHR.", 401)
    if not app.sealer.check_csrf(session_id, request.form.get("csrf")):
        return _message("Refused", "The form's security token is missing or wrong. Reload the app.", 403)
    submitted = submitted_values(request.form, app.questionnaire)
    fresh, prefilled = new_information(request.form, submitted)

    def again(message: str, status: int) -> Response:  # the page again, every answer kept
        return _render_form(session_id, data, submitted, message, status, prefilled=prefilled)

    try:
        answers = parse_answers(app.questionnaire, fresh)
    except FormError as exc:
        return again(str(exc), 422)
    if not answers:
        return again(
            "Nothing new to save: answer a question (answers the record already shows are not saved again).", 422
        )
    client = app.client()
    renewed = False
    if writeback.expired(data):
        renewal = writeback.renewed(data, client)
        if renewal is None:
            return again(writeback.EXPIRED, 401)
        data, renewed = renewal, True
    if not url_allowed(data["iss"], app.allowlist):  # the allowlist may have changed since the launch
        return again("This FHIR server is no longer allowed.", 403)
    resource = build_response(
        app.questionnaire, answers, data["patient"], datetime.now(UTC), _relative_user(data.get("user"), data["iss"])
    )
    timeout = app.settings.fhir_timeout_seconds
    upstream = writeback.post_response(data["iss"], data["token"], resource, timeout)
    if upstream is not None and upstream.status_code == 401 and not renewed:  # expired early, or revoked
        renewal = writeback.renewed(data, client)
        if renewal is not None:
            data, renewed = renewal, True
            upstream = writeback.post_response(data["iss"], data["token"], resource, timeout)
    if upstream is None or upstream.status_code not in (200, 201):
        message, status = writeback.failure(upstream)
        log.warning(
            "smart save failed",
            extra={"fhir_status": getattr(upstream, "status_code", None), "resource_type": "QuestionnaireResponse"},
        )
        response = again(message, status)
        return _keep_session(response, session_id, data) if renewed else response
    saved_id = None
    try:
        saved_id = upstream.json().get("id")
    except ValueError:
        pass
    log.info("smart questionnaire response saved", extra={"resource_type": "QuestionnaireResponse"})
    html = render_template("smart/saved.html", count=len(answers), saved_id=saved_id)
    response = Response(html, 201, mimetype="text/html")
    return _keep_session(response, session_id, data) if renewed else response
