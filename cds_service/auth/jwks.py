"""Issuer signing keys: JWK Set parsing, the per-issuer cache, and the bounded HTTP fetch.

Keys come from where the operator said (a JWKS file or URL, or a ``jku`` under an allowlisted
prefix). JWKS are cached per issuer and source for ``jwks_cache_seconds``. An unknown ``kid``
triggers at most one refresh per issuer per :data:`FORCED_REFRESH_INTERVAL_SECONDS` so forged tokens
cannot turn the service into a JWKS-fetching amplifier. Fetches have timeouts, a size cap and no
redirects.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import PyJWTError

from .model import fail, log

_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
MIN_RSA_BITS = 2048

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


def parse_jwks(body: bytes) -> dict[str, list[_Key]]:
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
class Source:
    kind: str  # "url" | "file"
    location: str
    from_jku: bool = False


@dataclass
class _IssuerState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: OrderedDict[Source, _CacheEntry] = field(default_factory=OrderedDict)
    last_forced: float | None = None


class FetchError(Exception):
    """A JWKS source could not be loaded; the message is safe to log (no token content)."""



class KeyStore:
    """Cached public keys of every trusted issuer; one per process, thread-safe."""

    def __init__(self, issuers: Iterable[str], ttl: float, http: requests.Session):
        self._ttl = ttl
        self._http = http
        self._state = {iss: _IssuerState() for iss in issuers}

    def find_key(
        self, iss: str, sources: list[Source], kid: str, alg: str, now: float
    ) -> jwt.PyJWK:
        state = self._state[iss]
        with state.lock:  # one fetch at a time per issuer; other issuers are not held up
            attempted: set[Source] = set()  # loaded (or tried) during this call already
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
                raise fail("jwks", "the issuer's signing keys are unavailable", iss)
            raise fail("kid", "no key with this kid is trusted for the issuer", iss)
        for candidate in candidates:
            parsed = candidate.for_algorithm(alg)
            if parsed is not None:
                return parsed
        raise fail("alg", "alg does not match the issuer's key", iss)

    def _entry(self, state: _IssuerState, source: Source) -> _CacheEntry:
        entry = state.entries.get(source)
        if entry is None:
            entry = state.entries[source] = _CacheEntry()
            jku_sources = [s for s in state.entries if s.from_jku]
            while len(jku_sources) > MAX_JKU_SOURCES_PER_ISSUER:
                del state.entries[jku_sources.pop(0)]
        else:
            state.entries.move_to_end(source)
        return entry

    def _needs_load(self, state: _IssuerState, source: Source, entry: _CacheEntry, now: float) -> bool:
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

    def _load(self, source: Source, entry: _CacheEntry, now: float) -> bool:
        """Load ``source`` into ``entry``; on failure keep the previous (stale) keys and back off."""
        try:
            body = self._read_file(source.location) if source.kind == "file" else self._fetch(source.location)
            keys = parse_jwks(body)
        except (FetchError, OSError, ValueError) as exc:
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
            raise FetchError(f"JWKS file larger than {JWKS_MAX_BYTES} bytes")
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
            raise FetchError(f"JWKS request failed ({type(exc).__name__})") from None
        try:
            if response.status_code != 200:
                raise FetchError(f"JWKS request answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > JWKS_MAX_BYTES:
                raise FetchError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=16 * 1024):
                body.extend(chunk)
                if len(body) > JWKS_MAX_BYTES:
                    raise FetchError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
                if time.monotonic() - started > JWKS_TOTAL_TIMEOUT_SECONDS:
                    raise FetchError("JWKS download exceeded its time budget")
            return bytes(body)
        except requests.RequestException as exc:
            raise FetchError(f"JWKS download failed ({type(exc).__name__})") from None
        finally:
            response.close()

    # -- errors -------------------------------------------------------------------------------------
