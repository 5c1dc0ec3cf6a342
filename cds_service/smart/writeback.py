"""Writing the QuestionnaireResponse to the EHR with the launch's token, renewing the token when the
EHR allows it (SMART `online_access` refresh token), and saying in words why a write failed."""

from __future__ import annotations

import time
from typing import Any

import requests

from . import oauth

EXPIRED = (
    "The EHR no longer accepts this launch's access (the token expired or was revoked), so nothing was saved. "
    "Launch the app again from the EHR; your answers are kept below."
)


def expires_at(token: dict[str, Any]) -> float | None:
    expires_in = token.get("expires_in")
    return time.time() + float(expires_in) if isinstance(expires_in, int | float) else None


def expired(data: dict[str, Any]) -> bool:
    """By the app's own clock (the token response's expires_in)."""
    return data.get("exp") is not None and data["exp"] < time.time()


def renewed(data: dict[str, Any], client: oauth.ClientConfig) -> dict[str, Any] | None:
    """The launch session with a new access token, or None when there is no refresh token or the EHR refuses."""
    if not data.get("refresh") or not data.get("token_endpoint"):
        return None
    token = oauth.refresh(client, data["token_endpoint"], data["refresh"])
    if token is None:
        return None
    return {
        **data,
        "token": token["access_token"],
        "exp": expires_at(token),
        "refresh": token.get("refresh_token") or data["refresh"],  # the EHR may rotate it
    }


def post_response(iss: str, token: str, resource: dict[str, Any], timeout: float) -> requests.Response | None:
    """POST {iss}/QuestionnaireResponse; None when the server does not answer."""
    try:
        return requests.post(
            f"{iss}/QuestionnaireResponse",
            json=resource,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
            },
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException:
        return None


def failure(response: requests.Response | None) -> tuple[str, int]:
    """What the clinician reads, and the page's HTTP status, for a write that did not succeed."""
    if response is None:
        return "The EHR's FHIR server did not answer, so nothing was saved. Try again.", 502
    if response.status_code == 401:
        return EXPIRED, 401
    if response.status_code == 403:
        return "The EHR refused to store the assessment (HTTP 403: not permitted), so nothing was saved.", 403
    if response.status_code >= 500:
        return f"The EHR's FHIR server failed (HTTP {response.status_code}), so nothing was saved. Try again.", 502
    return f"The EHR rejected the assessment (HTTP {response.status_code}), so nothing was saved.", 502
