"""The vocabulary every part of client authentication shares: errors, the caller's identity, limits.

Kept apart from the verification steps so the issuers file, the JWKS store and the replay caches can
raise the same errors and respect the same size limits without importing each other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cds_service import tables

log = logging.getLogger("cds_service.auth")

MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = tables.MAX_JTI_CHARS
MAX_ISS_CHARS = tables.MAX_ISS_CHARS

#: Every value AuthError.check can take, with its meaning (also documented in docs/security.md).
CHECKS: Mapping[str, str] = {
    "missing": "no Authorization header while authentication is required",
    "header": "Authorization header is not 'Bearer <JWT>'",
    "malformed": "token is not a well-formed compact JWS",
    "alg": "alg missing, not asymmetric, or not usable with the issuer's key",
    "typ": "typ header is not JWT",
    "kid": "kid missing, or no key with that kid in the issuer's JWKS",
    "jku": "jku is not allowlisted for the issuer (never fetched)",
    "iss": "iss missing or not a trusted issuer",
    "jwks": "the issuer's keys could not be obtained",
    "signature": "signature does not verify with the issuer's key",
    "claims": "a required claim (iss, aud, exp, iat, jti) is missing or has the wrong type",
    "aud": "aud does not name the URL that was called",
    "exp": "token expired, or its lifetime (exp - iat) is implausibly long",
    "nbf": "token not yet valid (nbf in the future beyond the clock skew)",
    "iat": "token issued in the future beyond the clock skew",
    "tenant": "tenant claim contradicts the tenant configured for the issuer",
    "jti-replay": "this (iss, jti) was already used",
}


class AuthError(Exception):
    """The request is not authenticated; the app answers 401 with ``reason`` in the JSON body.

    ``check`` is the machine name of the failed check (see :data:`CHECKS`) for logs and metrics;
    ``reason`` is fixed text that never contains the token or other caller-supplied values.
    """

    def __init__(self, check: str, reason: str):
        super().__init__(reason)
        self.check = check
        self.reason = reason

    def __repr__(self) -> str:
        return f"AuthError(check={self.check!r}, reason={self.reason!r})"


class AuthUnavailable(RuntimeError):
    """The token could not be checked because the replay cache (database) failed: answer 503.

    Distinct from AuthError because the client did nothing wrong; the service still fails closed.
    """


@dataclass(frozen=True)
class AuthContext:
    """Who called. All None when authentication is off or an optional-mode caller sent no token.

    ``fhir_allowlist`` is the per-issuer list of FHIR server URL prefixes; None means "use the global
    CDS_FHIR_ALLOWLIST" (it replaces, not extends, the global list for that issuer's calls).
    """

    issuer: str | None = None
    tenant: str | None = None
    subject: str | None = None
    fhir_allowlist: tuple[str, ...] | None = None


ANONYMOUS = AuthContext()


def fail(check: str, reason: str, issuer: str | None = None) -> AuthError:
    """Log the failure (check name and configured issuer only) and build the AuthError to raise."""
    log.warning("client authentication failed: %s", check, extra={"check": check, "issuer": issuer})
    return AuthError(check, reason)
