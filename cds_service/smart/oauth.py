"""SMART App Launch 2.0, the client side: discovery, authorization request, code exchange, fhirUser.

The OAuth 2.0 authorization code flow with PKCE (S256) and `state` is Authlib's
(`authlib.integrations.requests_client.OAuth2Session`); this module adds only what SMART adds on
top: `.well-known/smart-configuration` discovery, the `aud` and `launch` parameters, the launch
context in the token response, and the OpenID Connect `fhirUser` claim (id_token verified with
PyJWT against the server's `jwks_uri`). Every call has a timeout; nothing here logs a token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc6749.errors import OAuth2Error

from cds_service.settings import SettingsError
from cds_service.urls import check_service_url

log = logging.getLogger("cds_service.smart")

SCOPE = (
    "launch openid fhirUser online_access patient/Patient.r patient/Condition.rs patient/Observation.rs "
    "patient/MedicationRequest.rs patient/QuestionnaireResponse.crs"
)
STANDALONE_SCOPE = SCOPE.replace("launch ", "launch/patient ", 1)


class LaunchError(Exception):
    """The launch cannot go on; the message is shown to the clinician (no identifiers, no tokens)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ClientConfig:
    client_id: str
    redirect_uri: str
    timeout: float


def new_verifier() -> str:
    """A PKCE code_verifier: 64 characters of the unreserved set (RFC 7636 4.1 asks for 43-128)."""
    return generate_token(64)


def discover(iss: str, timeout: float, session: requests.Session | None = None) -> dict[str, Any]:
    """`{iss}/.well-known/smart-configuration`, checked for what this app needs. Call only for an
    allowlisted iss: this is the first request the app makes to it."""
    http = session or requests
    try:
        response = http.get(
            f"{iss.rstrip('/')}/.well-known/smart-configuration",
            headers={"Accept": "application/json"},
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise LaunchError("The EHR's FHIR server did not answer (SMART configuration).", 502) from exc
    if response.status_code != 200:
        raise LaunchError(f"The EHR's FHIR server has no SMART configuration (HTTP {response.status_code}).", 502)
    try:
        config = response.json()
    except ValueError as exc:
        raise LaunchError("The EHR's SMART configuration is not JSON.", 502) from exc
    for key in ("authorization_endpoint", "token_endpoint"):
        value = config.get(key) if isinstance(config, dict) else None
        try:
            check_service_url(str(value), key)
        except SettingsError as exc:
            raise LaunchError(f"The EHR's SMART configuration has no usable {key}.", 502) from exc
    if "S256" not in (config.get("code_challenge_methods_supported") or []):
        raise LaunchError("The EHR does not support PKCE with S256, which this app requires.", 502)
    return config


def authorization_url(
    client: ClientConfig, config: dict[str, Any], iss: str, launch: str | None, state: str, verifier: str
) -> str:
    """Where to send the browser: the EHR's authorize endpoint with PKCE, state, aud and launch."""
    session = OAuth2Session(
        client.client_id,
        scope=SCOPE if launch else STANDALONE_SCOPE,
        redirect_uri=client.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    extra = {"aud": iss, **({"launch": launch} if launch else {})}
    url, _ = session.create_authorization_url(
        config["authorization_endpoint"], state=state, code_verifier=verifier, **extra
    )
    return url


def exchange_code(
    client: ClientConfig, config: dict[str, Any], callback_url: str, state: str, verifier: str
) -> dict[str, Any]:
    """The token response for the code in callback_url; LaunchError on a bad state or a refused code."""
    session = OAuth2Session(
        client.client_id,
        redirect_uri=client.redirect_uri,
        state=state,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    try:
        token = session.fetch_token(
            config["token_endpoint"],
            authorization_response=callback_url,
            code_verifier=verifier,
            timeout=client.timeout,
        )
    except (OAuth2Error, OAuthError) as exc:
        error = getattr(exc, "error", None) or type(exc).__name__
        log.warning("smart token exchange refused", extra={"error": str(error)})
        if "state" in str(error).lower():
            raise LaunchError("This sign-in response does not belong to the launch this browser started.") from exc
        raise LaunchError("The EHR refused to issue an access token for this launch. Launch the app again.") from exc
    except requests.RequestException as exc:
        raise LaunchError("The EHR's token endpoint did not answer.", 502) from exc
    finally:
        session.close()
    if not token.get("access_token"):
        raise LaunchError("The EHR's token response has no access token.", 502)
    return dict(token)


def refresh(client: ClientConfig, token_endpoint: str, refresh_token: str) -> dict[str, Any] | None:
    """A new token response for an expired access token (SMART `online_access`), or None when the EHR
    refuses (the user's EHR session ended, the refresh token was revoked) or does not answer."""
    session = OAuth2Session(client.client_id, token_endpoint_auth_method="none")
    try:
        token = session.refresh_token(token_endpoint, refresh_token=refresh_token, timeout=client.timeout)
    except (OAuth2Error, OAuthError, requests.RequestException) as exc:
        log.warning("smart token refresh refused", extra={"error": type(exc).__name__})
        return None
    finally:
        session.close()
    return dict(token) if token.get("access_token") else None


def fhir_user(token: dict[str, Any], config: dict[str, Any], client_id: str, timeout: float) -> str | None:
    """The `fhirUser` claim of a verified id_token, or None (no id_token, no jwks_uri, or not verifiable)."""
    id_token, jwks_uri = token.get("id_token"), config.get("jwks_uri")
    if not id_token or not jwks_uri:
        return None
    try:
        check_service_url(str(jwks_uri), "jwks_uri")
        key = jwt.PyJWKClient(str(jwks_uri), timeout=int(max(1, timeout))).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(id_token, key.key, algorithms=["RS256", "ES256", "RS384", "ES384"], audience=client_id)
    except (jwt.PyJWTError, SettingsError) as exc:
        log.warning("smart id_token not verified; response saved without author", extra={"error": type(exc).__name__})
        return None
    value = claims.get("fhirUser")
    return value if isinstance(value, str) else None


def state_token() -> str:
    return generate_token(32)
