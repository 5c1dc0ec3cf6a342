"""Authentication of the CDS client (the EHR) by the JWT it sends on every CDS Hooks call.

CDS Hooks 2.0 ("Trusting CDS Clients"): when authentication is on, discovery, invocation and feedback
calls carry ``Authorization: Bearer <JWT>`` signed with the client's private key. This package decides
whether such a token is acceptable and, if so, who sent it (:class:`AuthContext`).

Layout, each module importing only those above it:

* :mod:`.model` — errors (:class:`AuthError` → 401, :class:`AuthUnavailable` → 503), the check
  vocabulary (:data:`CHECKS`), :class:`AuthContext`, size limits.
* :mod:`.jwks` — JWK Set parsing, the per-issuer key cache and the bounded JWKS fetch.
* :mod:`.issuers` — the trusted-issuer registry (``CDS_ISSUERS_FILE``), validated at start-up.
* :mod:`.replay` — the ``(iss, jti)`` replay caches (SQL, shared by every worker; in-memory for tests).
* :mod:`.verification` — :class:`Authenticator`: header, issuer, key, signature, claims, replay.

Design choices and the threat each answers are in docs/security.md.
"""

from .issuers import TrustedIssuer, load_issuers
from .jwks import KeyStore
from .model import (
    ANONYMOUS,
    CHECKS,
    MAX_ISS_CHARS,
    MAX_JTI_CHARS,
    MAX_TOKEN_CHARS,
    AuthContext,
    AuthError,
    AuthUnavailable,
)
from .replay import MemoryReplayCache, ReplayCache, SqlReplayCache, jwt_replay
from .verification import ALLOWED_ALGORITHMS, REQUIRED_CLAIMS, Authenticator

__all__ = [
    "ALLOWED_ALGORITHMS",
    "ANONYMOUS",
    "CHECKS",
    "MAX_ISS_CHARS",
    "MAX_JTI_CHARS",
    "MAX_TOKEN_CHARS",
    "REQUIRED_CLAIMS",
    "AuthContext",
    "AuthError",
    "AuthUnavailable",
    "Authenticator",
    "KeyStore",
    "MemoryReplayCache",
    "ReplayCache",
    "SqlReplayCache",
    "TrustedIssuer",
    "jwt_replay",
    "load_issuers",
]
