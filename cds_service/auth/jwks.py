"""Issuer signing keys: JWK Set parsing, the per-issuer cache, and the bounded HTTP fetch.

Keys come from where the operator said (a JWKS file or URL, or a ``jku`` under an allowlisted
prefix). Key sets are cached per issuer and source for ``jwks_cache_seconds``. The cache is built to
stay useful under attack and when a key host is slow:

* An unknown ``kid``, and the first load of a URL a token names, cost one fetch per issuer per
  :data:`FORCED_REFRESH_INTERVAL_SECONDS`: forged tokens cannot make the service a fetch amplifier.
* A ``jku`` set stays "pending" until it has verified a signature. Pending sets evict only pending
  sets, so forged tokens naming new URLs cannot push out the set real tokens use; configured sources
  are never evicted. A verified set past its TTL is refreshed on schedule, outside that budget.
* Loads run on a small background pool, never under the per-issuer lock. Requests that hold a cached
  key (even a stale one) do not wait for a refresh; a request with no usable key waits at most
  :data:`JWKS_WAIT_SECONDS`. A fetch has connect/read timeouts, a total budget, a size cap and no
  redirects.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import PyJWTError

from ..compute_gate import released
from .model import fail, log

_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
MIN_RSA_BITS = 2048

JWKS_MAX_BYTES = 256 * 1024
JWKS_CONNECT_TIMEOUT_SECONDS = 3.05
JWKS_READ_TIMEOUT_SECONDS = 5.0
JWKS_TOTAL_TIMEOUT_SECONDS = 8.0
#: How long a request waits for keys it does not have yet (a first load, or a refresh for an unknown
#: kid). The fetch goes on in the background; a request that has keys never waits for a refresh.
JWKS_WAIT_SECONDS = 4.0
#: Unknown-kid refreshes (and first loads of token-named jku sources) per issuer are at most this often.
FORCED_REFRESH_INTERVAL_SECONDS = 60.0
#: After a failed load of a source, wait this long before trying it again (stale keys stay in use).
FAILED_FETCH_BACKOFF_SECONDS = 10.0
#: jku key sets remembered per issuer, each kind apart: "pending" sets were fetched because a token
#: named them, "verified" sets have verified a token's signature. Pending sets only evict pending
#: sets, so forged tokens naming new URLs cannot push out the key set real tokens use.
MAX_JKU_SOURCES_PER_ISSUER = 4
#: Background fetch threads per process (fetches are rare: TTL expiry, rotation, first load).
JWKS_FETCH_THREADS = 2



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
    verified: bool = False  # a token's signature verified with one of these keys (jku sources)
    loading: Future[None] | None = None  # the fetch in flight, if any


@dataclass(frozen=True)
class Source:
    kind: str  # "url" | "file"
    location: str
    from_jku: bool = False


@dataclass
class _IssuerState:
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards entries; never held during I/O
    entries: OrderedDict[Source, _CacheEntry] = field(default_factory=OrderedDict)
    last_forced: float | None = None


class FetchError(Exception):
    """A JWKS source could not be loaded; the message is safe to log (no token content)."""


class KeyStore:
    """Cached public keys of every trusted issuer; one per process, thread-safe.

    Loads run on a small background pool, never under the per-issuer lock: a request whose key is
    cached is answered from the cache (stale keys included) while one fetch refreshes the set; only a
    request that has no usable key waits, and for at most :data:`JWKS_WAIT_SECONDS`.
    """

    def __init__(self, issuers: Iterable[str], ttl: float, http: requests.Session):
        self._ttl = ttl
        self._http = http
        self._state = {iss: _IssuerState() for iss in issuers}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def find_key(self, iss: str, sources: list[Source], kid: str, alg: str, now: float) -> tuple[jwt.PyJWK, Source]:
        """The key ``kid`` for ``alg`` and the source it came from; AuthError jwks/kid/alg otherwise."""
        state = self._state[iss]
        attempted: set[Source] = set()
        found: tuple[list[_Key], Source] | None = None
        for source in sources:  # in order: stop at the first source that knows the kid
            with state.lock:
                entry = self._entry(state, source, now)
                loading = self._start_load_if_due(state, source, entry, now) if entry is not None else None
            if entry is None:
                continue
            if loading is not None:
                attempted.add(source)
            candidates = entry.keys.get(kid, [])
            if not candidates and loading is not None:
                self._wait(loading)  # keys we do not have yet: wait for them, within a bound
                candidates = entry.keys.get(kid, [])
            if candidates:
                found = (candidates, source)
                break
        if found is None:
            found = self._forced_refresh(state, sources, attempted, kid, now)
        if found is None:
            with state.lock:
                have_keys = any(state.entries.get(s) is not None and state.entries[s].keys for s in sources)
            if not have_keys:
                raise fail("jwks", "the issuer's signing keys are unavailable", iss)
            raise fail("kid", "no key with this kid is trusted for the issuer", iss)
        candidates, source = found
        for candidate in candidates:
            parsed = candidate.for_algorithm(alg)
            if parsed is not None:
                return parsed, source
        raise fail("alg", "alg does not match the issuer's key", iss)

    def confirm(self, iss: str, source: Source) -> None:
        """A token's signature verified with a key from ``source``: protect that set from eviction."""
        state = self._state[iss]
        with state.lock:
            entry = state.entries.get(source)
            if entry is None or entry.verified:
                return
            entry.verified = True
            verified = [s for s, e in state.entries.items() if s.from_jku and e.verified]
            while len(verified) > MAX_JKU_SOURCES_PER_ISSUER:  # least recently used first
                del state.entries[verified.pop(0)]

    def close(self) -> None:
        """Stop the background pool (fetches in flight finish on their own timeouts)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    # -- cache bookkeeping (callers hold state.lock) --------------------------------------------------

    def _entry(self, state: _IssuerState, source: Source, now: float) -> _CacheEntry | None:
        """The cache entry of ``source``; a token-named jku gets one only within the forced budget."""
        entry = state.entries.get(source)
        if entry is not None:
            state.entries.move_to_end(source)
            return entry
        if source.from_jku:
            # A URL named by a not-yet-verified token: first loads share the forced-refresh budget.
            if not self._forced_allowed(state, now):
                return None
            state.last_forced = now
        entry = state.entries[source] = _CacheEntry()
        pending = [s for s, e in state.entries.items() if s.from_jku and not e.verified]
        while len(pending) > MAX_JKU_SOURCES_PER_ISSUER:  # pending sets evict pending sets only
            del state.entries[pending.pop(0)]
        return entry

    def _start_load_if_due(
        self, state: _IssuerState, source: Source, entry: _CacheEntry, now: float
    ) -> Future[None] | None:
        """Start a scheduled load (never loaded, or older than the TTL) unless one runs or backs off.

        Returns the load in flight for this entry, if any (started now or earlier).
        """
        if entry.loading is not None and not entry.loading.done():
            return entry.loading
        if entry.failed_at is not None and now - entry.failed_at < FAILED_FETCH_BACKOFF_SECONDS:
            return None
        if entry.loaded_at is not None and now - entry.loaded_at < self._ttl:
            return None
        return self._start_load(state, source, entry, now)

    def _start_load(self, state: _IssuerState, source: Source, entry: _CacheEntry, now: float) -> Future[None]:
        if entry.loading is None or entry.loading.done():
            entry.loading = self._executor().submit(self._load, state, source, entry, now)
        return entry.loading

    @staticmethod
    def _forced_allowed(state: _IssuerState, now: float) -> bool:
        return state.last_forced is None or now - state.last_forced >= FORCED_REFRESH_INTERVAL_SECONDS

    def _forced_refresh(
        self, state: _IssuerState, sources: list[Source], attempted: set[Source], kid: str, now: float
    ) -> tuple[list[_Key], Source] | None:
        """Unknown kid: the issuer may have rotated keys. Refresh once per interval, then rate-limit."""
        with state.lock:
            if not self._forced_allowed(state, now):
                return None
            state.last_forced = now
            loads = [
                (source, entry, self._start_load(state, source, entry, now))
                for source in sources
                if source not in attempted and (entry := state.entries.get(source)) is not None
            ]
        for source, entry, loading in loads:
            self._wait(loading)
            candidates = entry.keys.get(kid, [])
            if candidates:
                return candidates, source
        return None

    # -- loading (background threads) ----------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=JWKS_FETCH_THREADS, thread_name_prefix="jwks")
            return self._pool

    @staticmethod
    def _wait(loading: Future[None]) -> None:
        try:
            with released():  # other hook calls compute while this one waits for the keys
                loading.result(timeout=JWKS_WAIT_SECONDS)
        except FutureTimeout:
            log.warning("JWKS load still running after %.1f s; request not held longer", JWKS_WAIT_SECONDS,
                        extra={"check": "jwks"})

    def _load(self, state: _IssuerState, source: Source, entry: _CacheEntry, now: float) -> None:
        """Load ``source`` into ``entry``; on failure keep the previous (stale) keys and back off."""
        try:
            body = self._read_file(source.location) if source.kind == "file" else self._fetch(source.location)
            keys = parse_jwks(body)
        except (FetchError, OSError, ValueError) as exc:
            with state.lock:
                entry.failed_at = now
            log.warning("JWKS load failed: %s", exc, extra={"check": "jwks", "jwks_source": source.kind})
            return
        with state.lock:
            entry.keys = keys
            entry.loaded_at = now
            entry.failed_at = None

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
            for chunk in response.iter_content(chunk_size=4 * 1024):  # small: the time budget is checked per chunk
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
