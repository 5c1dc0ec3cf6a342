"""Authentication of the CDS client (the EHR) by the JWT it sends on every CDS Hooks call.

CDS Hooks 2.0 ("Trusting CDS Clients"): when authentication is on, discovery, invocation and feedback
calls carry ``Authorization: Bearer <JWT>`` signed with the client's private key. This module decides
whether such a token is acceptable and, if so, who sent it (:class:`AuthContext`).

Design choices, and why:

* **Trust is configured, never discovered.** An ``iss`` is trusted only when it is listed in the
  issuers file (``CDS_ISSUERS_FILE``). The unverified claims are read for one purpose only — to pick the
  issuer entry — and every claim is checked again after the signature is verified.
* **Keys come from where the operator said.** Each issuer has a JWKS file or URL and/or a list of
  ``jku`` URL prefixes. A ``jku`` header that matches none of them is rejected *without* being fetched:
  fetching a URL an unauthenticated caller names would be server-side request forgery.
* **Asymmetric algorithms only** (ES*, RS*, PS*). ``none`` and HMAC are rejected before any key is
  looked at; the algorithm must also suit the key (curve, key type, the JWK's own ``alg``), which closes
  the classic "HS256 signed with the public key as secret" confusion.
* **JWKS are cached** per issuer and source for ``jwks_cache_seconds``. An unknown ``kid`` triggers at
  most one refresh per issuer per :data:`FORCED_REFRESH_INTERVAL_SECONDS` so forged tokens cannot turn
  the service into a JWKS-fetching amplifier. Fetches have timeouts, a size cap and no redirects.
* **Replay protection** remembers ``(iss, jti)`` until the token expires, in a table shared by every
  worker and instance (:class:`SqlReplayCache`); inserting is the atomic "first one wins" test.
* **The token never leaves this module**: errors carry a fixed, safe reason; logs carry the failed
  check name and the configured issuer only.

Failed checks are named by :attr:`AuthError.check`; the vocabulary is listed in :data:`CHECKS`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import InvalidAlgorithmError, InvalidSignatureError, PyJWTError
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cds_service import tables
from cds_service.settings import Settings, SettingsError
from cds_service.urls import check_service_url, normalise_url, url_has_prefix

log = logging.getLogger("cds_service.auth")

#: Algorithms a CDS client may sign with. Asymmetric only: the service holds no shared secret, and
#: accepting HS* next to RS*/ES* is what makes key-confusion attacks possible.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
MIN_RSA_BITS = 2048

REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")

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

MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = tables.MAX_JTI_CHARS
MAX_ISS_CHARS = tables.MAX_ISS_CHARS
#: Upper bound on exp - iat. CDS clients mint a token per call (the sandbox and Epic use 5 minutes);
#: a long-lived token is a stolen-token risk and would pin replay-cache rows for as long.
MAX_TOKEN_LIFETIME_SECONDS = 3600

JWKS_MAX_BYTES = 256 * 1024
JWKS_CONNECT_TIMEOUT_SECONDS = 3.05
JWKS_READ_TIMEOUT_SECONDS = 5.0
JWKS_TOTAL_TIMEOUT_SECONDS = 8.0
#: Unknown-kid refreshes (and first loads of token-named jku sources) per issuer are at most this often.
FORCED_REFRESH_INTERVAL_SECONDS = 60.0
#: After a failed load of a source, wait this long before trying it again (stale keys stay in use).
FAILED_FETCH_BACKOFF_SECONDS = 10.0
#: Distinct jku URLs remembered per issuer; bounds memory when a prefix admits many URLs.
MAX_JKU_SOURCES_PER_ISSUER = 4

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


# --------------------------------------------------------------------------------------------------
# Public types


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


class ReplayCache(Protocol):
    """Remembers (issuer, jti) pairs until ``expires_at`` (epoch seconds)."""

    def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record the pair; return False when it was already recorded (a replay)."""
        ...


@dataclass(frozen=True)
class TrustedIssuer:
    """One entry of the issuers file: how to recognise and verify tokens from one CDS client."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jku_allowlist: tuple[str, ...] = ()
    tenant: str | None = None
    fhir_allowlist: tuple[str, ...] | None = None


# --------------------------------------------------------------------------------------------------
# Issuers file

_ISSUER_FIELDS = {"iss", "jwks_url", "jwks_file", "jku_allowlist", "tenant", "fhir_allowlist"}


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise SettingsError(f"{what}: expected a list of URL strings")
    return tuple(item.strip() for item in value)


def load_issuers(path: Path) -> dict[str, TrustedIssuer]:
    """Read and validate the trusted-issuer registry (YAML; JSON is valid YAML and accepted too).

    Format (see docs/security.md)::

        issuers:
          - iss: https://sandbox.cds-hooks.org
            jwks_file: sandbox-jwks.json          # relative to this file; or jwks_url: https://...
            jku_allowlist: [https://sandbox.cds-hooks.org/.well-known/jwks.json]
            tenant: sandbox                        # optional
            fhir_allowlist: [https://launch.smarthealthit.org/v/r4/fhir]   # optional

    Everything is checked here, at start-up: unknown fields (a typo such as ``jwks_uri`` must not
    silently disable a key source), duplicate issuers, non-https URLs, unreadable JWKS files.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"CDS_ISSUERS_FILE: cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("issuers"), list):
        raise SettingsError(f"CDS_ISSUERS_FILE {path}: expected a mapping with an 'issuers' list")
    issuers: dict[str, TrustedIssuer] = {}
    for index, entry in enumerate(raw["issuers"]):
        where = f"CDS_ISSUERS_FILE {path.name} issuers[{index}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where}: expected a mapping")
        unknown = set(entry) - _ISSUER_FIELDS
        if unknown:
            raise SettingsError(
                f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ISSUER_FIELDS)}"
            )
        iss = entry.get("iss")
        if not isinstance(iss, str) or not iss.strip() or len(iss) > MAX_ISS_CHARS:
            raise SettingsError(f"{where}: 'iss' must be a non-empty string of at most {MAX_ISS_CHARS} chars")
        if iss in issuers:
            raise SettingsError(f"{where}: issuer {iss!r} is listed twice")
        jwks_url = entry.get("jwks_url")
        jwks_file_raw = entry.get("jwks_file")
        if jwks_url is not None and jwks_file_raw is not None:
            raise SettingsError(f"{where}: give jwks_url or jwks_file, not both")
        if jwks_url is not None:
            if not isinstance(jwks_url, str):
                raise SettingsError(f"{where}: jwks_url must be a string")
            check_service_url(jwks_url, f"{where} jwks_url")
        jwks_file: Path | None = None
        if jwks_file_raw is not None:
            if not isinstance(jwks_file_raw, str):
                raise SettingsError(f"{where}: jwks_file must be a path string")
            jwks_file = Path(jwks_file_raw)
            if not jwks_file.is_absolute():
                jwks_file = (path.parent / jwks_file).resolve()
            try:
                _parse_jwks(jwks_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{where}: jwks_file {jwks_file} is not a usable JWKS: {exc}") from exc
        jku_allowlist: tuple[str, ...] = ()
        if entry.get("jku_allowlist") is not None:
            jku_allowlist = _string_list(entry["jku_allowlist"], f"{where} jku_allowlist")
            for prefix in jku_allowlist:
                check_service_url(prefix, f"{where} jku_allowlist")
        if jwks_url is None and jwks_file is None and not jku_allowlist:
            raise SettingsError(f"{where}: needs jwks_url, jwks_file or jku_allowlist to find keys")
        tenant = entry.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
            raise SettingsError(f"{where}: tenant must be a non-empty string")
        fhir_allowlist: tuple[str, ...] | None = None
        if entry.get("fhir_allowlist") is not None:
            fhir_allowlist = _string_list(entry["fhir_allowlist"], f"{where} fhir_allowlist")
            for prefix in fhir_allowlist:
                check_service_url(prefix, f"{where} fhir_allowlist")
        issuers[iss] = TrustedIssuer(
            iss=iss,
            jwks_url=jwks_url,
            jwks_file=jwks_file,
            jku_allowlist=jku_allowlist,
            tenant=tenant,
            fhir_allowlist=fhir_allowlist,
        )
    return issuers


# --------------------------------------------------------------------------------------------------
# JWKS parsing and caching


@dataclass
class _Key:
    """A usable public verification key and the algorithms it may verify."""

    jwk: dict[str, Any]
    algorithms: frozenset[str]
    _parsed: dict[str, jwt.PyJWK] = field(default_factory=dict)

    def for_algorithm(self, alg: str) -> jwt.PyJWK | None:
        if alg not in self.algorithms:
            return None
        if alg not in self._parsed:
            try:
                parsed = jwt.PyJWK(self.jwk, algorithm=alg)
            except PyJWTError:
                return None
            if isinstance(parsed.key, RSAPublicKey) and parsed.key.key_size < MIN_RSA_BITS:
                return None
            self._parsed[alg] = parsed
        return self._parsed[alg]


def _algorithms_for(jwk: dict[str, Any]) -> frozenset[str]:
    """Algorithms a JWK may verify: its own ``alg`` if it declares one, else what its type allows."""
    kty = jwk.get("kty")
    if kty == "EC":
        candidates = {alg for alg, crv in _EC_CURVE_FOR_ALG.items() if crv == jwk.get("crv")}
    elif kty == "RSA":
        candidates = set(_RSA_ALGS)
    else:
        return frozenset()
    declared = jwk.get("alg")
    if declared is not None:
        candidates &= {declared}
    return frozenset(candidates)


def _parse_jwks(body: bytes) -> dict[str, list[_Key]]:
    """Parse a JWK Set into kid → usable public keys; raises ValueError when nothing is usable.

    Keys without ``kid`` are dropped (tokens must name their key), as are encryption keys, keys whose
    ``key_ops`` exclude verify, symmetric keys, and anything carrying private material.
    """
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("expected a JSON object with a 'keys' array")
    keys: dict[str, list[_Key]] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        if "d" in jwk or "k" in jwk:  # private or symmetric material has no place in a trust store
            log.warning("JWKS entry with private/symmetric material ignored", extra={"check": "jwks"})
            continue
        algorithms = _algorithms_for(jwk)
        if not algorithms:
            continue
        keys.setdefault(jwk["kid"], []).append(_Key(dict(jwk), algorithms))
    if not keys:
        raise ValueError("no usable public signing key with a kid")
    return keys


@dataclass
class _CacheEntry:
    keys: dict[str, list[_Key]] = field(default_factory=dict)
    loaded_at: float | None = None  # last successful load
    failed_at: float | None = None  # last failed load


@dataclass(frozen=True)
class _Source:
    kind: str  # "url" | "file"
    location: str
    from_jku: bool = False


@dataclass
class _IssuerState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: OrderedDict[_Source, _CacheEntry] = field(default_factory=OrderedDict)
    last_forced: float | None = None


class _FetchError(Exception):
    """A JWKS source could not be loaded; the message is safe to log (no token content)."""


# --------------------------------------------------------------------------------------------------
# Replay caches


#: The replay table, defined with every other table in cds_service.tables and created by the migrations.
jwt_replay = tables.jwt_replay


class SqlReplayCache:
    """Replay cache in a SQL table shared by every worker process and service instance.

    The primary key (issuer, jti) makes the database the arbiter: "INSERT … ON CONFLICT DO NOTHING"
    (SQLite, PostgreSQL; a plain INSERT caught on IntegrityError elsewhere) succeeds for exactly one
    caller, however many workers race. Rows expire at the token's exp (+ clock skew); expired rows are
    purged at most every ``purge_interval`` seconds per instance, so no scheduler is needed.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        purge_interval: float = 60.0,
        ensure_schema: Callable[[], Any] | None = None,
    ):
        self._engine = engine
        # the service passes its store's schema check (which honours CDS_AUTO_MIGRATE); alone, the
        # cache brings the schema up through the migrations on first use
        self._ensure_schema = ensure_schema or (lambda: self.create_table(engine))
        self._clock = clock
        self._purge_interval = purge_interval
        self._last_purge: float | None = None
        self._purge_lock = threading.Lock()
        self._table_ready = False

    @staticmethod
    def create_table(engine: Engine) -> None:
        """Bring the schema, ``jwt_replay`` with it, to the latest revision through the migrations
        (idempotent, locked): no table is created outside cds_service.migrations."""
        from cds_service import migrations

        migrations.upgrade(engine)

    def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
        if not self._table_ready:
            # The database may have been down at start-up: make sure the schema is there on first use.
            self._ensure_schema()
            self._table_ready = True
        now = self._clock()
        self._maybe_purge(now)
        row = {"issuer": issuer, "jti": jti, "expires_at": int(math.ceil(expires_at))}
        if self._insert(row):
            return True
        # The pair exists. If that row has expired (an issuer recycling jti values long after), it no
        # longer protects anything: delete it and compete for the insert again — still atomic.
        with self._engine.begin() as conn:
            stale = conn.execute(
                delete(jwt_replay).where(
                    jwt_replay.c.issuer == issuer, jwt_replay.c.jti == jti, jwt_replay.c.expires_at < now
                )
            ).rowcount
        return bool(stale) and self._insert(row)

    def purge(self, now: float | None = None) -> int:
        """Delete expired rows; returns how many. Called opportunistically by :meth:`remember`."""
        cutoff = self._clock() if now is None else now
        with self._engine.begin() as conn:
            return conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at < cutoff)).rowcount or 0

    def _maybe_purge(self, now: float) -> None:
        with self._purge_lock:
            if self._last_purge is not None and now - self._last_purge < self._purge_interval:
                return
            self._last_purge = now
        try:
            self.purge(now)
        except Exception:  # purge is housekeeping: never fail an authentication because of it
            log.warning("jwt_replay purge failed", exc_info=True, extra={"check": "jti-replay"})

    def _insert(self, row: dict[str, Any]) -> bool:
        dialect = self._engine.dialect.name
        if dialect in {"sqlite", "postgresql"}:
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            statement = dialect_insert(jwt_replay).values(**row).on_conflict_do_nothing()
            with self._engine.begin() as conn:
                if self._engine.dialect.insert_returning:
                    # RETURNING yields a row only when this caller inserted it; rowcount is not
                    # reliable here (psycopg 3 reports -1 for INSERT … ON CONFLICT DO NOTHING).
                    return conn.execute(statement.returning(jwt_replay.c.jti)).first() is not None
                return conn.execute(statement).rowcount == 1
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(jwt_replay).values(**row))
            return True
        except IntegrityError:
            return False


class MemoryReplayCache:
    """In-process replay cache for tests and single-process development servers only.

    Not shared between workers: with gunicorn (several processes) use :class:`SqlReplayCache`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {key: exp for key, exp in self._seen.items() if exp >= now}
            previous = self._seen.get((issuer, jti))
            if previous is not None and previous >= now:
                return False
            self._seen[(issuer, jti)] = expires_at
            return True


# --------------------------------------------------------------------------------------------------
# The authenticator


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
        self._state = {iss: _IssuerState() for iss in self.issuers}

    # -- public --------------------------------------------------------------------------------------

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
            raise self._fail("missing", "authentication required: send Authorization: Bearer <JWT>")
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
            raise self._fail("header", "Authorization header must be 'Bearer <JWT>'")
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN_RE.fullmatch(token):
            raise self._fail("malformed", "bearer token is not a compact JWS")
        try:
            jose_header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            raise self._fail("malformed", "bearer token is not a compact JWS") from None

        alg = jose_header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise self._fail("alg", "alg must be one of " + ", ".join(sorted(ALLOWED_ALGORITHMS)))
        typ = jose_header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in {"jwt", "application/jwt"}:
            raise self._fail("typ", "typ header must be JWT")
        if "crit" in jose_header or "b64" in jose_header:
            raise self._fail("malformed", "critical JWS header extensions are not supported")
        kid = jose_header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise self._fail("kid", "kid header is required")

        iss = unverified.get("iss")
        if iss is None:
            raise self._fail("claims", "missing required claim: iss")
        if not isinstance(iss, str) or iss not in self.issuers:
            raise self._fail("iss", "issuer is not trusted by this service")
        issuer = self.issuers[iss]

        sources = self._key_sources(issuer, jose_header.get("jku"))
        key = self._find_key(issuer, sources, kid, alg, now)

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
            raise self._fail("signature", "signature verification failed", iss) from None
        except InvalidAlgorithmError:
            raise self._fail("alg", "alg does not match the issuer's key", iss) from None
        except PyJWTError:
            raise self._fail("malformed", "bearer token is not a compact JWS", iss) from None

        return self._check_claims(issuer, claims, called_url, now)

    def _check_claims(
        self, issuer: TrustedIssuer, claims: dict[str, Any], called_url: str, now: float
    ) -> AuthContext:
        iss = issuer.iss
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise self._fail("claims", f"missing required claim: {name}", iss)
        if claims["iss"] != iss:  # cannot differ from the unverified read, but never trust that
            raise self._fail("iss", "issuer is not trusted by this service", iss)
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_number(claims[name]):
                raise self._fail("claims", f"claim {name} must be a number (seconds since the epoch)", iss)
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise self._fail("claims", f"claim jti must be a string of 1-{MAX_JTI_CHARS} characters", iss)

        expected = self.expected_audience(called_url)
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise self._fail("claims", "claim aud must be a string or an array of strings", iss)
        if expected is None or expected not in {normalise_url(item) for item in audiences}:
            raise self._fail("aud", "aud does not match the URL called", iss)

        exp, iat = float(claims["exp"]), float(claims["iat"])
        if now >= exp + self._skew:
            raise self._fail("exp", "token has expired", iss)
        if "nbf" in claims and float(claims["nbf"]) > now + self._skew:
            raise self._fail("nbf", "token is not yet valid (nbf)", iss)
        if iat > now + self._skew:
            raise self._fail("iat", "token is issued in the future (iat)", iss)
        if exp - iat > MAX_TOKEN_LIFETIME_SECONDS:
            raise self._fail("exp", f"token lifetime exceeds {MAX_TOKEN_LIFETIME_SECONDS} seconds", iss)

        tenant = issuer.tenant
        claimed_tenant = claims.get("tenant")
        if claimed_tenant is not None:
            if not isinstance(claimed_tenant, str):
                raise self._fail("claims", "claim tenant must be a string", iss)
            if tenant is not None and claimed_tenant != tenant:
                raise self._fail("tenant", "tenant does not match the issuer's configuration", iss)
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
            raise self._fail("jti-replay", "token has already been used (jti)", iss)

        subject = claims.get("sub")
        return AuthContext(
            issuer=iss,
            tenant=tenant,
            subject=subject if isinstance(subject, str) else None,
            fhir_allowlist=issuer.fhir_allowlist,
        )

    # -- keys ---------------------------------------------------------------------------------------

    def _key_sources(self, issuer: TrustedIssuer, jku: Any) -> list[_Source]:
        """Where to look for the token's key, in order; rejects a non-allowlisted jku before any I/O."""
        configured: _Source | None = None
        if issuer.jwks_file is not None:
            configured = _Source("file", str(issuer.jwks_file))
        elif issuer.jwks_url is not None:
            configured = _Source("url", issuer.jwks_url)
        if jku is None:
            if configured is None:
                raise self._fail("jku", "this issuer's tokens must name their JWKS (jku)", issuer.iss)
            return [configured]
        if not isinstance(jku, str):
            raise self._fail("jku", "jku is not allowlisted for this issuer", issuer.iss)
        configured_url = normalise_url(issuer.jwks_url) if issuer.jwks_url else None
        same_as_configured = configured_url is not None and normalise_url(jku) == configured_url
        if not same_as_configured and not any(url_has_prefix(jku, prefix) for prefix in issuer.jku_allowlist):
            raise self._fail("jku", "jku is not allowlisted for this issuer", issuer.iss)
        sources = [configured] if configured is not None else []
        if not same_as_configured:
            # Keys configured out of band for this issuer are trusted whatever the jku says, so a kid
            # found there needs no fetch; the jku is fetched only when they do not have it.
            sources.append(_Source("url", jku, from_jku=True))
        return sources

    def _find_key(
        self, issuer: TrustedIssuer, sources: list[_Source], kid: str, alg: str, now: float
    ) -> jwt.PyJWK:
        state = self._state[issuer.iss]
        with state.lock:  # one fetch at a time per issuer; other issuers are not held up
            attempted: set[_Source] = set()  # loaded (or tried) during this call already
            candidates: list[_Key] = []
            for source in sources:  # in order: stop at the first source that knows the kid
                entry = self._entry(state, source)
                if self._needs_load(state, source, entry, now):
                    attempted.add(source)
                    self._load(source, entry, now)
                candidates.extend(entry.keys.get(kid, []))
                if candidates:
                    break
            if not candidates and self._forced_allowed(state, now):
                # Unknown kid: the issuer may have rotated keys. Refresh once, then rate-limit.
                state.last_forced = now
                for source in sources:
                    if source in attempted:
                        continue
                    entry = self._entry(state, source)
                    self._load(source, entry, now)
                    candidates.extend(entry.keys.get(kid, []))
                    if candidates:
                        break
            have_keys = any(state.entries.get(source) and state.entries[source].keys for source in sources)
        if not candidates:
            if not have_keys:
                raise self._fail("jwks", "the issuer's signing keys are unavailable", issuer.iss)
            raise self._fail("kid", "no key with this kid is trusted for the issuer", issuer.iss)
        for candidate in candidates:
            parsed = candidate.for_algorithm(alg)
            if parsed is not None:
                return parsed
        raise self._fail("alg", "alg does not match the issuer's key", issuer.iss)

    def _entry(self, state: _IssuerState, source: _Source) -> _CacheEntry:
        entry = state.entries.get(source)
        if entry is None:
            entry = state.entries[source] = _CacheEntry()
            jku_sources = [s for s in state.entries if s.from_jku]
            while len(jku_sources) > MAX_JKU_SOURCES_PER_ISSUER:
                del state.entries[jku_sources.pop(0)]
        else:
            state.entries.move_to_end(source)
        return entry

    def _needs_load(self, state: _IssuerState, source: _Source, entry: _CacheEntry, now: float) -> bool:
        """Scheduled load: never loaded, or older than the TTL; never within the failure back-off."""
        if entry.failed_at is not None and now - entry.failed_at < FAILED_FETCH_BACKOFF_SECONDS:
            return False
        if entry.loaded_at is None:
            if source.from_jku:
                # A URL named by a not-yet-verified token: first loads share the forced-refresh budget.
                if not self._forced_allowed(state, now):
                    return False
                state.last_forced = now
            return True
        return now - entry.loaded_at >= self._ttl

    @staticmethod
    def _forced_allowed(state: _IssuerState, now: float) -> bool:
        return state.last_forced is None or now - state.last_forced >= FORCED_REFRESH_INTERVAL_SECONDS

    def _load(self, source: _Source, entry: _CacheEntry, now: float) -> bool:
        """Load ``source`` into ``entry``; on failure keep the previous (stale) keys and back off."""
        try:
            body = self._read_file(source.location) if source.kind == "file" else self._fetch(source.location)
            keys = _parse_jwks(body)
        except (_FetchError, OSError, ValueError) as exc:
            entry.failed_at = now
            log.warning(
                "JWKS load failed: %s",
                exc,
                extra={"check": "jwks", "jwks_source": source.kind},
            )
            return False
        entry.keys = keys
        entry.loaded_at = now
        entry.failed_at = None
        return True

    @staticmethod
    def _read_file(location: str) -> bytes:
        path = Path(location)
        if path.stat().st_size > JWKS_MAX_BYTES:
            raise _FetchError(f"JWKS file larger than {JWKS_MAX_BYTES} bytes")
        return path.read_bytes()

    def _fetch(self, url: str) -> bytes:
        """GET a JWKS: no redirects (a redirect could leave the allowlist), timeouts, size cap."""
        started = time.monotonic()
        try:
            response = self._http.get(
                url,
                timeout=(JWKS_CONNECT_TIMEOUT_SECONDS, JWKS_READ_TIMEOUT_SECONDS),
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/jwk-set+json, application/json"},
            )
        except requests.RequestException as exc:
            raise _FetchError(f"JWKS request failed ({type(exc).__name__})") from None
        try:
            if response.status_code != 200:
                raise _FetchError(f"JWKS request answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > JWKS_MAX_BYTES:
                raise _FetchError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=16 * 1024):
                body.extend(chunk)
                if len(body) > JWKS_MAX_BYTES:
                    raise _FetchError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
                if time.monotonic() - started > JWKS_TOTAL_TIMEOUT_SECONDS:
                    raise _FetchError("JWKS download exceeded its time budget")
            return bytes(body)
        except requests.RequestException as exc:
            raise _FetchError(f"JWKS download failed ({type(exc).__name__})") from None
        finally:
            response.close()

    # -- errors -------------------------------------------------------------------------------------

    def _fail(self, check: str, reason: str, issuer: str | None = None) -> AuthError:
        """Log the failure (check name and configured issuer only) and build the AuthError."""
        log.warning(
            "client authentication failed: %s",
            check,
            extra={"check": check, "issuer": issuer},
        )
        return AuthError(check, reason)
