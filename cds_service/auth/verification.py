"""Verification of one CDS client JWT: header, issuer, key, signature, claims, replay — in that order.

The unverified claims are read for one purpose only — to pick the issuer entry — and every claim is
checked again after the signature is verified. Asymmetric algorithms only (ES*, RS*, PS*): ``none`` and
HMAC are rejected before any key is looked at; the algorithm must also suit the key, which closes the
classic "HS256 signed with the public key as secret" confusion. The token never leaves this module:
errors carry a fixed, safe reason; logs carry the failed check name and the configured issuer only.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from jwt.exceptions import InvalidAlgorithmError, InvalidSignatureError, PyJWTError

from cds_service.settings import Settings, SettingsError
from cds_service.urls import normalise_url, url_has_prefix

from .issuers import TrustedIssuer, load_issuers
from .jwks import KeyStore, Source
from .model import ANONYMOUS, MAX_JTI_CHARS, MAX_TOKEN_CHARS, AuthContext, AuthUnavailable, fail, log
from .replay import ReplayCache

#: Algorithms a CDS client may sign with. Asymmetric only: the service holds no shared secret, and
#: accepting HS* next to RS*/ES* is what makes key-confusion attacks possible.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)

REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
#: Upper bound on exp - iat. CDS clients mint a token per call (the sandbox and Epic use 5 minutes);
#: a long-lived token is a stolen-token risk and would pin replay-cache rows for as long.
MAX_TOKEN_LIFETIME_SECONDS = 3600

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _is_number(value: Any) -> bool:
    """A JSON number usable as epoch seconds (bool is an int in Python; huge ints overflow float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and abs(float(value)) < 1e13
    except OverflowError:
        return False


class Authenticator:
    """Verifies the CDS client JWT of one request; one instance per process, thread-safe.

    Construction loads and validates the issuers file, so configuration errors stop start-up
    (SettingsError) instead of turning every request into a 401.
    """

    def __init__(
        self,
        settings: Settings,
        replay_cache: ReplayCache,
        http: requests.Session | None = None,
    ):
        self.mode = settings.effective_auth_mode
        if self.mode not in {"off", "optional", "required"}:
            raise SettingsError(f"CDS_AUTH_MODE: expected off, optional or required, got {self.mode!r}")
        self._settings = settings
        self._replay_cache = replay_cache
        self._http = http if http is not None else requests.Session()
        self._skew = float(settings.jwt_clock_skew_seconds)
        self._ttl = float(settings.jwks_cache_seconds)
        if settings.public_base_url and normalise_url(settings.public_base_url) is None:
            raise SettingsError(
                f"CDS_PUBLIC_BASE_URL: {settings.public_base_url!r} is not an absolute http(s) URL"
            )
        self.issuers: dict[str, TrustedIssuer] = {}
        if self.mode != "off":
            if settings.issuers_file is None:
                raise SettingsError(
                    f"CDS_ISSUERS_FILE is required when CDS_AUTH_MODE is {self.mode} "
                    "(no trusted issuer means every call would be refused)"
                )
            self.issuers = load_issuers(settings.issuers_file)
        self._keys = KeyStore(self.issuers, self._ttl, self._http)

    # -- public --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the background JWKS fetch threads (Runtime.close)."""
        self._keys.close()

    def authenticate(
        self, authorization_header: str | None, called_url: str, now: float | None = None
    ) -> AuthContext:
        """Return who called, or raise AuthError (→ 401).

        ``called_url`` is the URL the client called, without query string (Flask: ``request.base_url``).
        When ``public_base_url`` is configured the expected ``aud`` is that base plus the path of
        ``called_url``, because behind a proxy the app does not see the URL the client used.
        ``now`` (epoch seconds) is for tests; it defaults to the wall clock.
        """
        if self.mode == "off":
            return ANONYMOUS
        header = (authorization_header or "").strip()
        if not header:
            if self.mode == "optional":
                return ANONYMOUS
            raise fail("missing", "authentication required: send Authorization: Bearer <JWT>")
        current = time.time() if now is None else now
        return self._verify(header, called_url, current)

    def expected_audience(self, called_url: str) -> str | None:
        """Normalised URL the token's ``aud`` must contain for a call to ``called_url``.

        With ``public_base_url`` set, a ``called_url`` already under that base is taken as is (the
        caller mapped it), anything else is re-based: public base + the path the app saw.
        """
        called = normalise_url(called_url)
        base = self._settings.public_base_url
        if not base:
            return called
        public = normalise_url(base)
        if (
            called is not None
            and public is not None
            and (called == public or called.startswith(public + "/"))
        ):
            return called
        path = urlsplit(called_url).path
        return normalise_url(base.rstrip("/") + "/" + path.lstrip("/"))

    # -- verification steps -------------------------------------------------------------------------

    def _verify(self, header: str, called_url: str, now: float) -> AuthContext:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise fail("header", "Authorization header must be 'Bearer <JWT>'")
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN_RE.fullmatch(token):
            raise fail("malformed", "bearer token is not a compact JWS")
        try:
            jose_header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            raise fail("malformed", "bearer token is not a compact JWS") from None

        alg = jose_header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise fail("alg", "alg must be one of " + ", ".join(sorted(ALLOWED_ALGORITHMS)))
        typ = jose_header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in {"jwt", "application/jwt"}:
            raise fail("typ", "typ header must be JWT")
        if "crit" in jose_header or "b64" in jose_header:
            raise fail("malformed", "critical JWS header extensions are not supported")
        kid = jose_header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise fail("kid", "kid header is required")

        iss = unverified.get("iss")
        if iss is None:
            raise fail("claims", "missing required claim: iss")
        if not isinstance(iss, str) or iss not in self.issuers:
            raise fail("iss", "issuer is not trusted by this service")
        issuer = self.issuers[iss]

        sources = self._key_sources(issuer, jose_header.get("jku"))
        key, key_source = self._keys.find_key(iss, sources, kid, alg, now)

        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,  # time claims are checked below against `now` with our skew
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                },
            )
        except InvalidSignatureError:
            raise fail("signature", "signature verification failed", iss) from None
        except InvalidAlgorithmError:
            raise fail("alg", "alg does not match the issuer's key", iss) from None
        except PyJWTError:
            raise fail("malformed", "bearer token is not a compact JWS", iss) from None

        self._keys.confirm(iss, key_source)  # this key set verified a signature: keep it over pending sets
        return self._check_claims(issuer, claims, called_url, now)

    def _check_claims(
        self, issuer: TrustedIssuer, claims: dict[str, Any], called_url: str, now: float
    ) -> AuthContext:
        iss = issuer.iss
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise fail("claims", f"missing required claim: {name}", iss)
        if claims["iss"] != iss:  # cannot differ from the unverified read, but never trust that
            raise fail("iss", "issuer is not trusted by this service", iss)
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_number(claims[name]):
                raise fail("claims", f"claim {name} must be a number (seconds since the epoch)", iss)
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise fail("claims", f"claim jti must be a string of 1-{MAX_JTI_CHARS} characters", iss)

        expected = self.expected_audience(called_url)
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise fail("claims", "claim aud must be a string or an array of strings", iss)
        if expected is None or expected not in {normalise_url(item) for item in audiences}:
            # The expected audience is public (the URL the client called, or CDS_PUBLIC_BASE_URL + path):
            # naming it turns "localhost vs 127.0.0.1" from an afternoon's search into one log line.
            shown = expected[:300] if expected else "(the called URL is not an absolute http(s) URL)"
            raise fail("aud", f"aud does not match the URL called; expected {shown}", iss)

        exp, iat = float(claims["exp"]), float(claims["iat"])
        if now >= exp + self._skew:
            raise fail("exp", "token has expired", iss)
        if "nbf" in claims and float(claims["nbf"]) > now + self._skew:
            raise fail("nbf", "token is not yet valid (nbf)", iss)
        if iat > now + self._skew:
            raise fail("iat", "token is issued in the future (iat)", iss)
        if exp - iat > MAX_TOKEN_LIFETIME_SECONDS:
            raise fail("exp", f"token lifetime exceeds {MAX_TOKEN_LIFETIME_SECONDS} seconds", iss)

        tenant = issuer.tenant
        claimed_tenant = claims.get("tenant")
        if claimed_tenant is not None:
            if not isinstance(claimed_tenant, str):
                raise fail("claims", "claim tenant must be a string", iss)
            if tenant is not None and claimed_tenant != tenant:
                raise fail("tenant", "tenant does not match the issuer's configuration", iss)
            tenant = claimed_tenant

        # Last: only a token that passed every other check may occupy the replay cache.
        try:
            first_use = self._replay_cache.remember(iss, jti, exp + self._skew)
        except Exception as exc:
            log.error(
                "replay cache unavailable",
                extra={"check": "jti-replay", "issuer": iss, "error_type": type(exc).__name__},
            )
            raise AuthUnavailable("token replay check unavailable") from None
        if not first_use:
            raise fail("jti-replay", "token has already been used (jti)", iss)

        subject = claims.get("sub")
        return AuthContext(
            issuer=iss,
            tenant=tenant,
            subject=subject if isinstance(subject, str) else None,
            fhir_allowlist=issuer.fhir_allowlist,
        )

    # -- keys ---------------------------------------------------------------------------------------

    def _key_sources(self, issuer: TrustedIssuer, jku: Any) -> list[Source]:
        """Where to look for the token's key, in order; rejects a non-allowlisted jku before any I/O."""
        configured: Source | None = None
        if issuer.jwks_file is not None:
            configured = Source("file", str(issuer.jwks_file))
        elif issuer.jwks_url is not None:
            configured = Source("url", issuer.jwks_url)
        if jku is None:
            if configured is None:
                raise fail("jku", "this issuer's tokens must name their JWKS (jku)", issuer.iss)
            return [configured]
        if not isinstance(jku, str):
            raise fail("jku", "jku is not allowlisted for this issuer", issuer.iss)
        configured_url = normalise_url(issuer.jwks_url) if issuer.jwks_url else None
        same_as_configured = configured_url is not None and normalise_url(jku) == configured_url
        if not same_as_configured and not any(url_has_prefix(jku, prefix) for prefix in issuer.jku_allowlist):
            raise fail("jku", "jku is not allowlisted for this issuer", issuer.iss)
        sources = [configured] if configured is not None else []
        if not same_as_configured:
            # Keys configured out of band for this issuer are trusted whatever the jku says, so a kid
            # found there needs no fetch; the jku is fetched only when they do not have it.
            sources.append(Source("url", jku, from_jku=True))
        return sources

