"""JWKS cache under attack and under a slow key host (issue 15 item 2).

Real HTTP throughout: the JWK Sets are served by local pytest-httpserver instances, and the tokens are
signed by generated keys (tests/security/conftest.py). Time is passed explicitly (``now=``) so the
60-second forced-refresh budget and the cache TTL can be crossed without sleeping.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_service.auth import Authenticator, AuthError, jwks

from .conftest import CALLED_URL, ISS, AuthFactory, SigningKey, claims_for
from .test_jwt import bearer, fails

PREFIX = "/ehr/keys/"


class KeyHost:
    """A JWKS host answering every path under PREFIX with the real key set; counts and can stall."""

    def __init__(self, server: HTTPServer, jwks_body: dict[str, Any]):
        self.server = server
        self.body = json.dumps(jwks_body)
        self.delay = 0.0
        self.status = 200
        self.paths: list[str] = []
        self._lock = threading.Lock()
        server.expect_request(re.compile("^" + re.escape(PREFIX) + ".*")).respond_with_handler(self._respond)

    def _respond(self, request: Request) -> Response:
        with self._lock:
            self.paths.append(request.path)
        time.sleep(self.delay)
        return Response(self.body, status=self.status, content_type="application/json")

    def url(self, name: str) -> str:
        return self.server.url_for(PREFIX + name)

    def hits(self, name: str) -> int:
        with self._lock:
            return self.paths.count(PREFIX + name)


@pytest.fixture
def key_host(keys: dict[str, SigningKey]) -> Iterator[KeyHost]:
    server = HTTPServer(threaded=True)
    server.start()
    yield KeyHost(server, {"keys": [keys["ES384"].public_jwk]})
    server.clear()
    server.stop()


def _jku_only(make_auth: AuthFactory, host: KeyHost, **overrides: Any) -> Authenticator:
    return make_auth([{"iss": ISS, "jku_allowlist": [host.url("")]}], **overrides)


def _real(keys: dict[str, SigningKey], host: KeyHost, now: float) -> str:
    return keys["ES384"].sign(claims_for(now), headers={"jku": host.url("jwks.json")})


def _forged(keys: dict[str, SigningKey], host: KeyHost, now: float, index: int) -> str:
    """Signed by an attacker's key under the real kid, naming a fresh jku under the allowed prefix."""
    return keys["other-ES384"].sign(claims_for(now), kid=keys["ES384"].kid,
                                    headers={"jku": host.url(f"forged-{index}.json")})


# ------------------------------------------------------------------------------------ eviction


def test_forged_jkus_cannot_evict_the_key_set_real_tokens_use(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost
) -> None:
    authenticator = _jku_only(make_auth, key_host)
    t0 = time.time()
    assert authenticator.authenticate(bearer(_real(keys, key_host, t0)), CALLED_URL, now=t0).issuer == ISS
    assert key_host.hits("jwks.json") == 1
    # 40 forged tokens, each with budget to have its jku fetched (61 s apart): the issue's attack x 2.5.
    for index in range(40):
        now = t0 + 61 * (index + 1)
        fails(authenticator, _forged(keys, key_host, now, index), "signature", now=now)
    fetched = sum(key_host.hits(f"forged-{i}.json") for i in range(40))
    assert fetched == 40  # every forged set was really fetched and cached as pending...
    now = t0 + 61 * 41
    # ...yet the real set is still cached: a real token verifies with no fetch at all.
    assert authenticator.authenticate(bearer(_real(keys, key_host, now)), CALLED_URL, now=now).issuer == ISS
    assert key_host.hits("jwks.json") == 1


def test_forged_jkus_between_real_calls_inside_the_budget_window(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost
) -> None:
    """The issue's exact sequence: 16 forged tokens in one burst, then real tokens: never a 401 jwks."""
    authenticator = _jku_only(make_auth, key_host)
    t0 = time.time()
    authenticator.authenticate(bearer(_real(keys, key_host, t0)), CALLED_URL, now=t0)
    for index in range(16):
        with pytest.raises(AuthError) as caught:
            authenticator.authenticate(bearer(_forged(keys, key_host, t0 + 1, index)), CALLED_URL, now=t0 + 1)
        assert caught.value.check in {"signature", "jwks"}  # jwks: its jku not fetched (budget spent)
    for offset in (2, 30, 61, 62, 200):
        context = authenticator.authenticate(bearer(_real(keys, key_host, t0 + offset)), CALLED_URL, now=t0 + offset)
        assert context.issuer == ISS


def test_a_verified_set_past_its_ttl_is_refreshed_on_schedule_not_from_the_forced_budget(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost
) -> None:
    authenticator = _jku_only(make_auth, key_host, jwks_cache_seconds=100)
    t0 = time.time()
    authenticator.authenticate(bearer(_real(keys, key_host, t0)), CALLED_URL, now=t0)
    fails(authenticator, _forged(keys, key_host, t0 + 150, 0), "signature", now=t0 + 150)  # spends the budget
    context = authenticator.authenticate(bearer(_real(keys, key_host, t0 + 151)), CALLED_URL, now=t0 + 151)
    assert context.issuer == ISS
    deadline = time.monotonic() + 5
    while key_host.hits("jwks.json") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert key_host.hits("jwks.json") == 2  # the scheduled refresh went out despite the spent budget


def test_pending_key_sets_stay_bounded(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost
) -> None:
    authenticator = _jku_only(make_auth, key_host)
    t0 = time.time()
    for index in range(20):
        now = t0 + 61 * index
        fails(authenticator, _forged(keys, key_host, now, index), "signature", now=now)
    entries = authenticator._keys._state[ISS].entries
    assert len(entries) <= jwks.MAX_JKU_SOURCES_PER_ISSUER
    assert not any(entry.verified for entry in entries.values())


# ------------------------------------------------------------------------------ slow key host


def _timed_calls(authenticator: Authenticator, tokens: list[str], now: float) -> list[tuple[float, str]]:
    """Authenticate every token in its own thread at once; (seconds, outcome) per call."""
    results: list[tuple[float, str]] = [(0.0, "")] * len(tokens)

    def call(index: int) -> None:
        started = time.monotonic()
        try:
            outcome = authenticator.authenticate(bearer(tokens[index]), CALLED_URL, now=now).issuer or ""
        except AuthError as exc:
            outcome = exc.check
        results[index] = (time.monotonic() - started, outcome)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(tokens))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_a_slow_refresh_does_not_hold_requests_that_have_keys(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost
) -> None:
    authenticator = make_auth([{"iss": ISS, "jwks_url": key_host.url("jwks.json")}], jwks_cache_seconds=100)
    t0 = time.time()
    authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0)
    key_host.delay = 3.0  # the key host becomes slow; the cached set is past its TTL
    now = t0 + 150
    results = _timed_calls(authenticator, [keys["ES384"].sign(claims_for(now)) for _ in range(8)], now)
    assert all(outcome == ISS for _, outcome in results), results
    assert max(seconds for seconds, _ in results) < 1.0, results  # stale keys served meanwhile
    deadline = time.monotonic() + 10
    while key_host.hits("jwks.json") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert key_host.hits("jwks.json") == 2  # one refresh for all eight requests


def test_a_first_load_from_a_slow_host_is_bounded_and_completes_in_the_background(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "JWKS_WAIT_SECONDS", 0.5)
    authenticator = make_auth([{"iss": ISS, "jwks_url": key_host.url("jwks.json")}])
    key_host.delay = 2.0
    t0 = time.time()
    results = _timed_calls(authenticator, [keys["ES384"].sign(claims_for(t0)) for _ in range(4)], t0)
    assert all(outcome == "jwks" for _, outcome in results), results
    assert max(seconds for seconds, _ in results) < 1.5, results
    time.sleep(2.5)  # the one background fetch completes
    assert authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0 + 3).issuer == ISS
    assert key_host.hits("jwks.json") == 1


def test_a_slow_issuer_does_not_hold_another(
    make_auth: AuthFactory, keys: dict[str, SigningKey], key_host: KeyHost
) -> None:
    other = HTTPServer(threaded=True)
    other.start()
    try:
        other.expect_request("/jwks.json").respond_with_json({"keys": [keys["RS384"].public_jwk]})
        slow_iss = "https://slow-ehr.example.org"
        authenticator = make_auth([{"iss": slow_iss, "jwks_url": key_host.url("jwks.json")},
                                   {"iss": ISS, "jwks_url": other.url_for("/jwks.json")}])
        key_host.delay = 3.0
        t0 = time.time()
        waiting = threading.Thread(target=lambda: _timed_calls(
            authenticator, [keys["ES384"].sign(claims_for(t0, iss=slow_iss))], t0))
        waiting.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert authenticator.authenticate(bearer(keys["RS384"].sign(claims_for(t0))), CALLED_URL, now=t0).issuer == ISS
        assert time.monotonic() - started < 1.0
        waiting.join(timeout=10)
    finally:
        other.clear()
        other.stop()
