"""An EHR that can launch SMART apps, in front of a sandbox FHIR server (tests and `cds-service sandbox`).

What a real EHR does for a SMART App Launch 2.0, reduced to what the tests and a developer need:

* ``{base}/fhir/.well-known/smart-configuration``: discovery (PKCE S256 only, SMART v2 scopes);
* ``{base}/fhir/_services/smart/Launch``: the launch-context endpoint the official CDS Hooks sandbox
  calls before it opens a card's ``smart`` link (``{launchUrl, parameters: {patient, appContext,
  user?}}`` -> ``{launch_id}``); the EHR then opens ``launchUrl?launch=<id>&iss=<fhir base>``;
* ``{base}/auth/authorize``: approves at once (no login page) and binds the launch's patient and
  user, or for a standalone launch ``standalone_patient``; PKCE S256 is required;
* ``{base}/auth/token``: authorization code -> an opaque, patient-scoped access token with the
  launch context (``patient``, ``appContext``) and a signed ``id_token`` naming ``fhirUser``;
* ``{base}/fhir/...``: a proxy to the real FHIR server. It accepts the tokens it issued (expiry,
  patient compartment and v2 scopes checked) and the backend's own static token (the CDS service's
  ``fhirAuthorization`` in tests), and forwards with the backend token.

Open mode (``open_mode=True``, ``cds-service sandbox --ehr-open``) needs no token on ``/fhir`` and
answers CORS from any origin, as the CDS Hooks sandbox's open launch requires. Never expose this
beyond loopback: it approves every authorization request. Tokens are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug import Request, Response
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .ehr_scopes import scope_refusal

HOST = "127.0.0.1"
FHIR_JSON = "application/fhir+json"
CODE_SECONDS = 60
DEFAULT_USER = "Practitioner/ehr-harness-user"
SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "online_access",
    "patient/*.rs",
    "patient/Patient.r",
    "patient/Condition.rs",
    "patient/Observation.rs",
    "patient/QuestionnaireResponse.cu",
    "patient/QuestionnaireResponse.rs",
)
PROXIED_HEADERS = ("Content-Type", "Location", "ETag", "Last-Modified")


class _QuietHandler(WSGIRequestHandler):
    """No access log: request lines carry authorization codes and launch ids."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Grant:
    """An issued authorization code or access token and what it is bound to."""

    client_id: str
    scope: str
    patient: str | None
    user: str | None
    app_context: str | None
    expires_at: float
    redirect_uri: str = ""
    code_challenge: str = ""
    used: bool = False


@dataclass
class EhrLaunchServer:
    """The EHR launch layer on 127.0.0.1 in front of ``fhir_base`` (a sandbox server's base URL)."""

    fhir_base: str
    fhir_token: str | None
    port: int = 0
    open_mode: bool = False
    token_seconds: int = 3600
    standalone_patient: str | None = None
    refuse_writes: bool = False  # tests: every create/update answers 403, as a read-only EHR would
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, Grant] = field(default_factory=dict)  # for scopes with online_access

    def __post_init__(self) -> None:
        self.fhir_base = self.fhir_base.rstrip("/")
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._http = requests.Session()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def iss(self) -> str:
        """The FHIR base URL apps are launched with (``iss``)."""
        return f"{self.base_url}/fhir"

    def start(self) -> EhrLaunchServer:
        self._server = make_server(HOST, self.port, self.wsgi, threaded=True, request_handler=_QuietHandler)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"ehr-launch-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._http.close()

    def __enter__(self) -> EhrLaunchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls

    def new_launch(self, patient: str, app_context: str | None = None, user: str | None = None) -> str:
        """What the launch endpoint does: remember the context, return the launch id."""
        launch_id = secrets.token_urlsafe(12)
        with self._lock:
            self.launches[launch_id] = {"patient": patient, "appContext": app_context, "user": user}
        return launch_id

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as after its lifetime); refresh tokens still work."""
        with self._lock:
            for grant in self.tokens.values():
                grant.expires_at = 0.0

    def end_sessions(self) -> None:
        """The user's EHR session ends: access and refresh tokens stop working."""
        self.expire_tokens()
        with self._lock:
            for grant in self.refresh_tokens.values():
                grant.expires_at = 0.0

    # ------------------------------------------------------------------ WSGI

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self._route(request)
        except Exception:  # noqa: BLE001 - a harness bug must answer, not hang the browser
            response = _outcome(500, "exception", "EHR harness error")
        if self.open_mode or request.path.startswith("/fhir/_services"):
            _cors(response, request)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        path = request.path
        if request.method == "OPTIONS":
            return Response(status=204)
        if path == "/fhir/.well-known/smart-configuration":
            return _json(self.smart_configuration())
        if path == "/fhir/_services/smart/Launch" and request.method == "POST":
            return self._launch_endpoint(request)
        if path == "/auth/authorize":
            return self._authorize(request)
        if path == "/auth/token" and request.method == "POST":
            return self._token(request)
        if path == "/auth/jwks":
            return _json({"keys": [self._jwk()]})
        if path == "/fhir" or path.startswith("/fhir/"):
            return self._proxy(request, path.removeprefix("/fhir"))
        return _json({"error": "not_found"}, 404)

    def smart_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.base_url,
            "jwks_uri": f"{self.base_url}/auth/jwks",
            "authorization_endpoint": f"{self.base_url}/auth/authorize",
            "token_endpoint": f"{self.base_url}/auth/token",
            "grant_types_supported": ["authorization_code"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": list(SCOPES_SUPPORTED),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": [
                "launch-ehr",
                "launch-standalone",
                "client-public",
                "context-ehr-patient",
                "context-standalone-patient",
                "permission-patient",
                "permission-v2",
                "sso-openid-connect",
            ],
        }

    # ------------------------------------------------------------------ launch and OAuth

    def _launch_endpoint(self, request: Request) -> Response:
        if not self.open_mode and not self._backend_token(request):
            return _json({"error": "unauthorized"}, 401)
        body = request.get_json(silent=True)
        params = body.get("parameters") if isinstance(body, dict) else None
        if not isinstance(params, dict) or not isinstance(params.get("patient"), str) or not params["patient"]:
            return _json({"error": "invalid_request", "field": "parameters.patient"}, 400)
        context = params.get("appContext")
        if context is not None and not isinstance(context, str):
            context = json.dumps(context)
        user = params.get("user") if isinstance(params.get("user"), str) else None
        return _json({"launch_id": self.new_launch(params["patient"], context, user)})

    def _authorize(self, request: Request) -> Response:
        q = request.args
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            return _json({"error": "invalid_request", "field": "redirect_uri"}, 400)

        def fail(error: str, why: str) -> Response:
            query = urlencode({"error": error, "error_description": why, "state": q.get("state", "")})
            return _redirect(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}")

        if q.get("response_type") != "code":
            return fail("unsupported_response_type", "response_type must be code")
        if not q.get("client_id") or not q.get("state"):
            return fail("invalid_request", "client_id and state are required")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return fail("invalid_request", "PKCE with S256 is required")
        if (q.get("aud") or "").rstrip("/") != self.iss:
            return fail("invalid_request", "aud must be this FHIR server")
        scope = q.get("scope", "")
        if q.get("launch"):
            with self._lock:
                launch = self.launches.get(q["launch"])
            if launch is None:
                return fail("invalid_request", "unknown launch")
            patient, user, context = launch["patient"], launch["user"], launch["appContext"]
        elif "launch/patient" in scope.split() and self.standalone_patient:
            patient, user, context = self.standalone_patient, None, None
        else:
            return fail("invalid_request", "no launch and no patient to choose")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.codes[code] = Grant(
                client_id=q["client_id"],
                scope=scope,
                patient=patient,
                user=user or DEFAULT_USER,
                app_context=context,
                expires_at=time.time() + CODE_SECONDS,
                redirect_uri=redirect_uri,
                code_challenge=q["code_challenge"],
            )
        query = urlencode({"code": code, "state": q["state"]})
        return _redirect(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}")

    def _token(self, request: Request) -> Response:
        form = request.form
        if form.get("grant_type") == "refresh_token":
            return self._refresh(form)
        if form.get("grant_type") != "authorization_code":
            return _json({"error": "unsupported_grant_type"}, 400)
        with self._lock:
            grant = self.codes.get(form.get("code", ""))
            if grant is not None:
                already_used, grant.used = grant.used, True
        if grant is None or already_used or grant.expires_at < time.time():
            return _json({"error": "invalid_grant", "error_description": "unknown, used or expired code"}, 400)
        if form.get("client_id") != grant.client_id or form.get("redirect_uri") != grant.redirect_uri:
            return _json({"error": "invalid_grant", "error_description": "client_id or redirect_uri differ"}, 400)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not hmac.compare_digest(challenge, grant.code_challenge):
            return _json({"error": "invalid_grant", "error_description": "PKCE verification failed"}, 400)
        body = self._issue(grant)
        if "openid" in grant.scope.split() and "fhirUser" in grant.scope.split():
            body["id_token"] = self._id_token(grant)
        if {"online_access", "offline_access"} & set(grant.scope.split()):
            refresh = secrets.token_urlsafe(32)
            with self._lock:
                self.refresh_tokens[refresh] = replace(grant, expires_at=time.time() + 8 * 3600)
            body["refresh_token"] = refresh
        return _json(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _refresh(self, form: Any) -> Response:
        with self._lock:
            grant = self.refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None or grant.expires_at < time.time() or form.get("client_id") != grant.client_id:
            return _json({"error": "invalid_grant", "error_description": "unknown or ended refresh token"}, 400)
        return _json(self._issue(grant), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _issue(self, grant: Grant) -> dict[str, Any]:
        """A new access token bound to the grant's patient, user, scope and launch context."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = replace(grant, expires_at=time.time() + self.token_seconds)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_seconds,
            "scope": grant.scope,
            "patient": grant.patient,
            "need_patient_banner": True,
        }
        if grant.app_context is not None:
            body["appContext"] = grant.app_context
        return body

    def _id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {
            "iss": self.base_url,
            "sub": grant.user,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "fhirUser": f"{self.iss}/{grant.user}",
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})

    def _jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {**jwk, "kid": self._kid, "use": "sig", "alg": "RS256"}

    # ------------------------------------------------------------------ FHIR proxy

    def _backend_token(self, request: Request) -> bool:
        bearer = _bearer(request)
        return bool(bearer and self.fhir_token and hmac.compare_digest(bearer, self.fhir_token))

    def _proxy(self, request: Request, rest: str) -> Response:
        if rest.startswith("/metadata"):
            pass
        elif not self.open_mode and not self._backend_token(request):
            with self._lock:
                grant = self.tokens.get(_bearer(request) or "")
            if grant is None or grant.expires_at < time.time():
                return _outcome(
                    401, "login", "access token missing, unknown or expired", {"WWW-Authenticate": "Bearer"}
                )
            refusal = scope_refusal(grant.scope, grant.patient, request, rest)
            if refusal:
                return _outcome(403, "forbidden", refusal)
        if self.refuse_writes and request.method in {"POST", "PUT", "PATCH", "DELETE"}:
            return _outcome(403, "forbidden", "this EHR does not accept writes from apps")
        headers = {"Accept": request.headers.get("Accept", FHIR_JSON)}
        for name in ("Content-Type", "Prefer", "If-Match", "If-None-Exist"):
            if request.headers.get(name):
                headers[name] = request.headers[name]
        if self.fhir_token:
            headers["Authorization"] = f"Bearer {self.fhir_token}"
        query = request.query_string.decode("latin-1")
        url = f"{self.fhir_base}{rest}" + (f"?{query}" if query else "")
        upstream = self._http.request(
            request.method,
            url,
            data=request.get_data() or None,
            headers=headers,
            timeout=(3, 30),
            allow_redirects=False,
        )
        body = upstream.content.replace(self.fhir_base.encode(), self.iss.encode())
        response = Response(body, status=upstream.status_code)
        for name in PROXIED_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name].replace(self.fhir_base, self.iss)
        return response


def _bearer(request: Request) -> str | None:
    value = request.headers.get("Authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json", headers=headers)


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return Response(json.dumps(body), status=status, content_type=FHIR_JSON, headers=headers)


def _redirect(url: str) -> Response:
    return Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


def _cors(response: Response, request: Request) -> None:
    response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin") or "*"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept, Prefer"
    response.headers["Access-Control-Expose-Headers"] = "Location, ETag"
    response.vary.add("Origin")


# ---------------------------------------------------------------------- `cds-service sandbox` wiring


def add_arguments(parser: Any) -> None:
    """The EHR launch options of `cds-service sandbox`."""
    parser.add_argument(
        "--ehr-port", type=int, default=None, help="port of the EHR launch layer (default: the server's port + 100)"
    )
    parser.add_argument("--no-ehr", action="store_true", help="no EHR launch layer in front of the server")
    parser.add_argument(
        "--ehr-open", action="store_true", help="open mode: /fhir needs no token and answers CORS (CDS Hooks sandbox)"
    )
    parser.add_argument("--ehr-patient", default=None, help="patient id a standalone launch is given")


def start_for(server: Any, args: Any, out: Any) -> EhrLaunchServer | None:
    """Start the EHR launch layer in front of a started SandboxServer (None with --no-ehr)."""
    if getattr(args, "no_ehr", False):
        return None
    ehr = EhrLaunchServer(
        server.base_url,
        server.token,
        port=args.ehr_port or server.port + 100,
        open_mode=bool(args.ehr_open),
        standalone_patient=args.ehr_patient,
    ).start()
    mode = "open (no token, CORS on)" if ehr.open_mode else "secured (launch tokens or the sandbox token)"
    print(f"sandbox: EHR launch layer {mode}: iss {ehr.iss}", file=out, flush=True)
    print(f"sandbox: launch endpoint {ehr.iss}/_services/smart/Launch", file=out, flush=True)
    return ehr
