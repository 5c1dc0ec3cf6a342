"""The CDS client JWT check matrix (CDS Hooks 2.0 "Trusting CDS Clients")."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine

from cds_service import auth
from cds_service.auth import (
    ANONYMOUS,
    AuthContext,
    Authenticator,
    AuthError,
    AuthUnavailable,
    MemoryReplayCache,
    SqlReplayCache,
)
from cds_service.logging_setup import configure_logging
from cds_service.settings import Settings, SettingsError

from .conftest import CALLED_URL, ISS, AuthFactory, JwksServer, SigningKey, b64url, claims_for

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
# The sandbox's published public JWKS lives outside the project; referenced, never copied.
# The official CDS Hooks sandbox's public key set, kept in the repository (a copy of
# shared/data/cds-hooks-sandbox-jwks.json) so a clone without ../shared passes.
SANDBOX_JWKS = Path(__file__).parent / "data" / "cds-hooks-sandbox-jwks.json"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def wait_for_hits(server: JwksServer, expected: int, timeout: float = 5.0) -> None:
    """Background JWKS loads: wait (bounded) until the server has seen ``expected`` requests."""
    deadline = time.monotonic() + timeout
    while server.hits < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.hits == expected


def wait_for_idle(authenticator: Authenticator, timeout: float = 5.0) -> None:
    """Wait until no JWKS load is in flight (its outcome recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = authenticator._keys._state.values()
        if all(e.loading is None or e.loading.done() for st in states for e in st.entries.values()):
            return
        time.sleep(0.01)
    raise AssertionError("JWKS load still in flight")


def fails(
    authenticator: Authenticator, token: str, check: str, url: str = CALLED_URL, **kw: Any
) -> AuthError:
    with pytest.raises(AuthError) as caught:
        authenticator.authenticate(bearer(token), url, **kw)
    assert caught.value.check == check, caught.value.reason
    assert token not in caught.value.reason and token not in repr(caught.value)
    return caught.value


# ---------------------------------------------------------------------------------------------- success


@pytest.mark.parametrize("name", ["ES384", "RS384", "PS256", "ES256"])
def test_valid_token_is_accepted(make_auth: AuthFactory, keys: dict[str, SigningKey], name: str) -> None:
    authenticator = make_auth()
    context = authenticator.authenticate(bearer(keys[name].sign(claims_for())), CALLED_URL)
    assert context == AuthContext(issuer=ISS, tenant=None, subject="ehr-client-42", fhir_allowlist=None)


def test_context_carries_tenant_and_fhir_allowlist(
    make_auth: AuthFactory, jwks_server: JwksServer, keys: dict[str, SigningKey]
) -> None:
    authenticator = make_auth(
        [
            {
                "iss": ISS,
                "jwks_url": jwks_server.url,
                "tenant": "clinic-a",
                "fhir_allowlist": ["https://fhir.ehr.example.org/r4"],
            }
        ]
    )
    context = authenticator.authenticate(bearer(keys["ES384"].sign(claims_for())), CALLED_URL)
    assert context.tenant == "clinic-a"
    assert context.fhir_allowlist == ("https://fhir.ehr.example.org/r4",)


def test_tenant_claim_used_when_not_configured_and_must_match_when_configured(
    make_auth: AuthFactory, jwks_server: JwksServer, keys: dict[str, SigningKey]
) -> None:
    key = keys["ES384"]
    open_tenant = make_auth()
    assert open_tenant.authenticate(bearer(key.sign(claims_for(tenant="t1"))), CALLED_URL).tenant == "t1"
    fixed = make_auth([{"iss": ISS, "jwks_url": jwks_server.url, "tenant": "t1"}])
    assert fixed.authenticate(bearer(key.sign(claims_for(tenant="t1"))), CALLED_URL).tenant == "t1"
    fails(fixed, key.sign(claims_for(tenant="t2")), "tenant")


# ---------------------------------------------------------------------------------------- signature/alg


def test_tampered_payload_fails_signature(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    token = keys["ES384"].sign(claims_for())
    header, _payload, signature = token.split(".")
    forged_payload = b64url(json.dumps(claims_for(sub="admin")).encode())
    fails(make_auth(), f"{header}.{forged_payload}.{signature}", "signature")


def test_key_not_published_but_kid_of_published_key_fails_signature(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    token = keys["other-ES384"].sign(claims_for(), kid=keys["ES384"].kid)
    fails(make_auth(), token, "signature")
    token = keys["other-RS384"].sign(claims_for(), kid=keys["RS384"].kid)
    fails(make_auth(), token, "signature")


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def test_alg_none_is_rejected(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    token = _unsigned({"alg": "none", "typ": "JWT", "kid": keys["ES384"].kid}, claims_for())
    fails(make_auth(), token, "alg")


def test_hs256_signed_with_public_key_pem_is_rejected(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    """The classic key-confusion attack: HMAC keyed with the (public) PEM the verifier holds."""
    for name in ("RS384", "ES384"):
        key = keys[name]
        header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(claims_for()).encode())
        mac = hmac.new(key.public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        fails(make_auth(), f"{head}.{body}.{b64url(mac)}", "alg")


def test_alg_that_does_not_suit_the_key_is_rejected(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    # An RS384 signature presented under the kid of an EC P-384 key, and ES256 under a P-384 kid.
    fails(make_auth(), keys["RS384"].sign(claims_for(), kid=keys["ES384"].kid), "alg")
    fails(make_auth(), keys["ES256"].sign(claims_for(), kid=keys["ES384"].kid), "alg")
    # The JWK declares alg RS384: a PS256 token under that kid is refused even though both are RSA.
    fails(make_auth(), keys["RS384"].sign(claims_for(), alg="PS256"), "alg")


def test_typ_must_be_jwt(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    key = keys["ES384"]
    fails(make_auth(), key.sign(claims_for(), headers={"typ": "at+jwt"}), "typ")
    fails(make_auth(), key.sign(claims_for(), drop_headers=("typ",)), "typ")


def test_missing_kid_is_rejected(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    fails(make_auth(), keys["ES384"].sign(claims_for(), drop_headers=("kid",)), "kid")


def test_crit_header_is_rejected(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    token = keys["ES384"].sign(claims_for(), headers={"crit": ["exp"], "exp": 1})
    with pytest.raises(AuthError) as caught:
        make_auth().authenticate(bearer(token), CALLED_URL)
    assert caught.value.check == "malformed"


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-jwt", "Bearer a.b", "Bearer a.b.c.d", "Token x.y.z"],
)
def test_malformed_authorization_header(make_auth: AuthFactory, header: str) -> None:
    with pytest.raises(AuthError) as caught:
        make_auth().authenticate(header, CALLED_URL)
    assert caught.value.check in {"header", "malformed"}


def test_oversized_token_is_rejected_before_parsing(make_auth: AuthFactory) -> None:
    with pytest.raises(AuthError) as caught:
        make_auth().authenticate("Bearer " + "eyJ" + "a" * 20_000 + ".b.c", CALLED_URL)
    assert caught.value.check == "malformed"


# ------------------------------------------------------------------------------------------ time claims


def test_expired_token(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    now = time.time()
    key = keys["ES384"]
    fails(make_auth(), key.sign(claims_for(now - 600, exp=int(now) - 120)), "exp")
    # Within the 60 s clock skew: accepted.
    assert make_auth().authenticate(bearer(key.sign(claims_for(now - 300, exp=int(now) - 30))), CALLED_URL)


def test_not_yet_valid_nbf(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    now = int(time.time())
    fails(make_auth(), keys["ES384"].sign(claims_for(now, nbf=now + 300)), "nbf")
    assert make_auth().authenticate(bearer(keys["ES384"].sign(claims_for(now, nbf=now + 30))), CALLED_URL)


def test_iat_in_the_future(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    now = int(time.time())
    fails(make_auth(), keys["ES384"].sign(claims_for(now + 300)), "iat")
    assert make_auth().authenticate(bearer(keys["ES384"].sign(claims_for(now + 30))), CALLED_URL)


def test_implausibly_long_lifetime_is_rejected(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    now = int(time.time())
    fails(make_auth(), keys["ES384"].sign(claims_for(now, exp=now + 30 * 24 * 3600)), "exp")


def test_clock_skew_setting_is_honoured(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    now = int(time.time())
    token = keys["ES384"].sign(claims_for(now - 400, exp=now - 100))
    fails(make_auth(), token, "exp")
    assert make_auth(jwt_clock_skew_seconds=300).authenticate(bearer(token), CALLED_URL)


def test_explicit_now_is_used_for_time_claims(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    issued = int(time.time())
    token = keys["ES384"].sign(claims_for(issued))
    fails(make_auth(), token, "exp", now=issued + 1000)
    fails(make_auth(), token, "iat", now=issued - 1000)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["soon", True, 10**400])
def test_time_claims_must_be_numbers(
    make_auth: AuthFactory, keys: dict[str, SigningKey], claim: str, value: Any
) -> None:
    fails(make_auth(), keys["ES384"].sign(claims_for(**{claim: value})), "claims")


# ---------------------------------------------------------------------------------------------- aud


def test_wrong_aud(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    key = keys["ES384"]
    fails(make_auth(), key.sign(claims_for(aud="https://cds.example.org/cds-services/other")), "aud")
    fails(make_auth(), key.sign(claims_for(aud="https://evil.example.org/cds-services/lbp-imaging")), "aud")
    fails(make_auth(), key.sign(claims_for(aud=["https://a.example", "https://b.example"])), "aud")
    fails(make_auth(), key.sign(claims_for(aud=42)), "claims")


def test_aud_array_containing_the_url_is_accepted(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    token = keys["ES384"].sign(claims_for(aud=["https://other.example/x", CALLED_URL]))
    assert make_auth().authenticate(bearer(token), CALLED_URL).issuer == ISS


@pytest.mark.parametrize(
    ("aud", "called"),
    [
        (CALLED_URL + "/", CALLED_URL),
        (CALLED_URL, CALLED_URL + "/"),
        ("HTTPS://CDS.EXAMPLE.ORG:443/cds-services/lbp-imaging", CALLED_URL),
    ],
)
def test_aud_comparison_normalises(
    make_auth: AuthFactory, keys: dict[str, SigningKey], aud: str, called: str
) -> None:
    assert make_auth().authenticate(bearer(keys["ES384"].sign(claims_for(aud=aud))), called).issuer == ISS


def test_public_base_url_behind_a_proxy(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    """Behind a proxy the app sees its internal URL; the token names the public one."""
    authenticator = make_auth(public_base_url="https://cds.example.org/")
    internal = "http://10.0.0.7:8080/cds-services/lbp-imaging"
    assert authenticator.authenticate(bearer(keys["ES384"].sign(claims_for())), internal).issuer == ISS
    fails(authenticator, keys["ES384"].sign(claims_for(aud=internal)), "aud", url=internal)


def test_public_base_url_already_applied_by_the_caller(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    """The app may pass either its own URL or one it already mapped to the public base."""
    authenticator = make_auth(public_base_url="https://apps.example.org/lbp")
    aud = "https://apps.example.org/lbp/cds-services/lbp-imaging"
    for called in (aud, "http://127.0.0.1:8080/cds-services/lbp-imaging"):
        token = keys["ES384"].sign(claims_for(aud=aud))
        assert authenticator.authenticate(bearer(token), called).issuer == ISS


def test_invalid_public_base_url_fails_at_start_up(make_auth: AuthFactory) -> None:
    with pytest.raises(SettingsError, match="CDS_PUBLIC_BASE_URL"):
        make_auth(public_base_url="cds.example.org")


def test_public_base_url_with_a_path_prefix(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    authenticator = make_auth(public_base_url="https://ehr-apps.example.org/lbp")
    aud = "https://ehr-apps.example.org/lbp/cds-services"
    token = keys["ES384"].sign(claims_for(aud=aud))
    assert authenticator.authenticate(bearer(token), "http://127.0.0.1:8080/cds-services").issuer == ISS


# ----------------------------------------------------------------------------------------- iss/claims


def test_unknown_issuer(make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer) -> None:
    fails(make_auth(), keys["ES384"].sign(claims_for(iss="https://evil.example.org")), "iss")
    assert jwks_server.hits == 0  # an unknown issuer never causes a key fetch


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti"])
def test_missing_required_claim(make_auth: AuthFactory, keys: dict[str, SigningKey], claim: str) -> None:
    error = fails(make_auth(), keys["ES384"].sign(claims_for(**{claim: ...})), "claims")
    assert claim in error.reason


def test_extra_claims_are_accepted(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    token = keys["ES384"].sign(claims_for(nbf=int(time.time()), fhirUser="Practitioner/1", epic_ver="1"))
    assert make_auth().authenticate(bearer(token), CALLED_URL).subject == "ehr-client-42"


@pytest.mark.parametrize("jti", ["", 42, "x" * 300])
def test_invalid_jti(make_auth: AuthFactory, keys: dict[str, SigningKey], jti: Any) -> None:
    fails(make_auth(), keys["ES384"].sign(claims_for(jti=jti)), "claims")


# ---------------------------------------------------------------------------------------------- replay


def test_replayed_jti_is_rejected(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    authenticator = make_auth()
    token = keys["ES384"].sign(claims_for())
    authenticator.authenticate(bearer(token), CALLED_URL)
    fails(authenticator, token, "jti-replay")


def test_same_jti_signed_anew_is_still_a_replay(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    authenticator = make_auth()
    claims = claims_for()
    authenticator.authenticate(bearer(keys["ES384"].sign(claims)), CALLED_URL)
    fails(authenticator, keys["RS384"].sign(claims), "jti-replay")


def test_rejected_token_does_not_consume_its_jti(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    authenticator = make_auth()
    claims = claims_for()
    fails(authenticator, keys["ES384"].sign({**claims, "aud": "https://wrong.example"}), "aud")
    assert authenticator.authenticate(bearer(keys["ES384"].sign(claims)), CALLED_URL).issuer == ISS


def test_replay_cache_failure_is_unavailable_not_unauthorized(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    class BrokenCache:
        def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
            raise OSError("database is down")

    with pytest.raises(AuthUnavailable):
        make_auth(replay_cache=BrokenCache()).authenticate(
            bearer(keys["ES384"].sign(claims_for())), CALLED_URL
        )


def test_sql_replay_cache_creates_its_table_on_first_use(
    make_auth: AuthFactory, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'late.sqlite3'}")  # table never created at start-up
    authenticator = make_auth(replay_cache=SqlReplayCache(engine))
    token = keys["ES384"].sign(claims_for())
    assert authenticator.authenticate(bearer(token), CALLED_URL).issuer == ISS
    fails(authenticator, token, "jti-replay")
    engine.dispose()


def test_replay_across_two_workers_sharing_one_sqlite_file(
    make_auth: AuthFactory, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    """Two Authenticators with their own engines on one database file: as two gunicorn workers."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    engine_a, engine_b = create_engine(url), create_engine(url)
    SqlReplayCache.create_table(engine_a)
    worker_a = make_auth(replay_cache=SqlReplayCache(engine_a))
    worker_b = make_auth(replay_cache=SqlReplayCache(engine_b))
    token = keys["ES384"].sign(claims_for())
    assert worker_a.authenticate(bearer(token), CALLED_URL).issuer == ISS
    fails(worker_b, token, "jti-replay")
    fresh = keys["ES384"].sign(claims_for())
    assert worker_b.authenticate(bearer(fresh), CALLED_URL).issuer == ISS
    fails(worker_a, fresh, "jti-replay")
    engine_a.dispose()
    engine_b.dispose()


# ---------------------------------------------------------------------------------------------- jku


def test_jku_off_the_allowlist_is_never_fetched(
    make_auth: AuthFactory,
    keys: dict[str, SigningKey],
    jwks_server: JwksServer,
    attacker_server: HTTPServer,
) -> None:
    authenticator = make_auth(
        [{"iss": ISS, "jwks_url": jwks_server.url, "jku_allowlist": [jwks_server.server.url_for("/ehr/")]}]
    )
    evil = attacker_server.url_for("/jwks.json")
    trusted_prefix = jwks_server.server.url_for("/ehr")
    bypass_attempts = [
        evil,
        trusted_prefix + "/../../jwks.json",  # dot segments
        trusted_prefix + "/%2e%2e/jwks.json",  # encoded dot segments
        trusted_prefix.replace("://", f"://{attacker_server.host}:{attacker_server.port}@"),  # userinfo
        trusted_prefix + "-evil/jwks.json",  # prefix without a path boundary
        "https://ehr.example.org.evil.example/ehr/jwks.json",
    ]
    for jku in bypass_attempts:
        token = keys["ES384"].sign(claims_for(), headers={"jku": jku})
        fails(authenticator, token, "jku")
    assert len(attacker_server.log) == 0
    assert jwks_server.hits == 0


def test_jku_without_any_jku_allowlist_is_rejected(
    make_auth: AuthFactory, keys: dict[str, SigningKey], attacker_server: HTTPServer
) -> None:
    token = keys["ES384"].sign(claims_for(), headers={"jku": attacker_server.url_for("/jwks.json")})
    fails(make_auth(), token, "jku")
    assert len(attacker_server.log) == 0


def test_jku_on_the_allowlist_is_fetched(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    authenticator = make_auth([{"iss": ISS, "jku_allowlist": [jwks_server.url]}])
    token = keys["RS384"].sign(claims_for(), headers={"jku": jwks_server.url})
    assert authenticator.authenticate(bearer(token), CALLED_URL).issuer == ISS
    assert jwks_server.hits == 1
    # Cached afterwards.
    token = keys["ES384"].sign(claims_for(), headers={"jku": jwks_server.url})
    assert authenticator.authenticate(bearer(token), CALLED_URL).issuer == ISS
    assert jwks_server.hits == 1


def test_issuer_with_only_a_jku_allowlist_requires_jku(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    authenticator = make_auth([{"iss": ISS, "jku_allowlist": [jwks_server.url]}])
    fails(authenticator, keys["ES384"].sign(claims_for()), "jku")


def test_jku_equal_to_the_configured_jwks_url_is_accepted(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    token = keys["ES384"].sign(claims_for(), headers={"jku": jwks_server.url})
    assert make_auth().authenticate(bearer(token), CALLED_URL).issuer == ISS
    assert jwks_server.hits == 1


def test_jku_must_be_a_string(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    fails(make_auth(), keys["ES384"].sign(claims_for(), headers={"jku": ["x"]}), "jku")


# ------------------------------------------------------------------------------- JWKS cache and refresh


def test_unknown_kid_refreshes_once_then_is_rate_limited(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    authenticator = make_auth()
    t0 = time.time()
    key = keys["ES384"]
    authenticator.authenticate(bearer(key.sign(claims_for(t0))), CALLED_URL, now=t0)
    assert jwks_server.hits == 1
    fails(authenticator, key.sign(claims_for(t0), kid="unknown-1"), "kid", now=t0 + 1)
    assert jwks_server.hits == 2  # exactly one refresh
    fails(authenticator, key.sign(claims_for(t0), kid="unknown-2"), "kid", now=t0 + 2)
    fails(authenticator, key.sign(claims_for(t0), kid="unknown-3"), "kid", now=t0 + 30)
    assert jwks_server.hits == 2  # rate limited: no fetch within 60 s
    fails(authenticator, key.sign(claims_for(t0), kid="unknown-4"), "kid", now=t0 + 62)
    assert jwks_server.hits == 3  # the next refresh is allowed after the interval
    # Known kids keep working from the cache throughout.
    authenticator.authenticate(bearer(key.sign(claims_for(t0))), CALLED_URL, now=t0 + 63)
    assert jwks_server.hits == 3


def test_key_rotation_is_picked_up_by_the_refresh(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    jwks_server.jwks = {"keys": [keys["ES384"].public_jwk]}
    authenticator = make_auth()
    t0 = time.time()
    authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0)
    jwks_server.jwks = {"keys": [keys["ES384"].public_jwk, keys["RS384"].public_jwk]}  # the EHR rotates
    context = authenticator.authenticate(bearer(keys["RS384"].sign(claims_for(t0))), CALLED_URL, now=t0 + 5)
    assert context.issuer == ISS
    assert jwks_server.hits == 2


def test_jwks_cached_for_ttl_then_refetched(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    authenticator = make_auth(jwks_cache_seconds=100)
    t0 = time.time()
    for offset in (0, 50, 99):
        authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0 + offset)
    assert jwks_server.hits == 1
    authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0 + 101)
    wait_for_hits(jwks_server, 2)  # refreshed in the background; the request used the cached keys


def test_stale_keys_are_used_when_the_refetch_fails(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    authenticator = make_auth(jwks_cache_seconds=100)
    t0 = time.time()
    authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0)
    jwks_server.status = 503
    context = authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0 + 150)
    assert context.issuer == ISS
    wait_for_hits(jwks_server, 2)
    wait_for_idle(authenticator)
    # Back-off: the failed source is not hammered on every request.
    authenticator.authenticate(bearer(keys["ES384"].sign(claims_for(t0))), CALLED_URL, now=t0 + 151)
    assert jwks_server.hits == 2


def test_unreachable_jwks_fails_closed(
    make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    jwks_server.status = 500
    authenticator = make_auth()
    t0 = time.time()
    fails(authenticator, keys["ES384"].sign(claims_for(t0)), "jwks", now=t0)
    fails(authenticator, keys["ES384"].sign(claims_for(t0)), "jwks", now=t0 + 1)
    assert jwks_server.hits == 1  # back-off between attempts


def test_jwks_size_cap(make_auth: AuthFactory, keys: dict[str, SigningKey], jwks_server: JwksServer) -> None:
    padding = [{"kty": "oct", "kid": f"pad-{i}", "k": "x" * 1000} for i in range(400)]
    jwks_server.jwks = {"keys": [keys["ES384"].public_jwk, *padding]}
    fails(make_auth(), keys["ES384"].sign(claims_for()), "jwks")


def test_jwks_redirect_is_not_followed(
    make_auth: AuthFactory, keys: dict[str, SigningKey], httpserver: HTTPServer, attacker_server: HTTPServer
) -> None:
    httpserver.expect_request("/moved.json").respond_with_data(
        "", status=302, headers={"Location": attacker_server.url_for("/jwks.json")}
    )
    authenticator = make_auth([{"iss": ISS, "jwks_url": httpserver.url_for("/moved.json")}])
    fails(authenticator, keys["ES384"].sign(claims_for()), "jwks")
    assert len(attacker_server.log) == 0


def test_jwks_fetch_timeout(
    make_auth: AuthFactory,
    keys: dict[str, SigningKey],
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow(_request: Any) -> Any:
        time.sleep(1.0)
        from werkzeug import Response

        return Response("{}", content_type="application/json")

    httpserver.expect_request("/slow.json").respond_with_handler(slow)
    monkeypatch.setattr(auth.jwks, "JWKS_READ_TIMEOUT_SECONDS", 0.2)
    authenticator = make_auth([{"iss": ISS, "jwks_url": httpserver.url_for("/slow.json")}])
    started = time.monotonic()
    fails(authenticator, keys["ES384"].sign(claims_for()), "jwks")
    assert time.monotonic() - started < 1.0


def test_session_passed_in_is_used(
    tmp_path: Path, keys: dict[str, SigningKey], jwks_server: JwksServer
) -> None:
    calls: list[str] = []

    class CountingSession(requests.Session):
        def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            calls.append(str(url))
            assert kwargs["allow_redirects"] is False and kwargs["timeout"]
            return super().get(url, **kwargs)

    issuers = tmp_path / "issuers.yaml"
    issuers.write_text(yaml.safe_dump({"issuers": [{"iss": ISS, "jwks_url": jwks_server.url}]}))
    settings = Settings(auth_mode="required", issuers_file=issuers)
    authenticator = Authenticator(settings, MemoryReplayCache(), http=CountingSession())
    authenticator.authenticate(bearer(keys["ES384"].sign(claims_for())), CALLED_URL)
    assert calls == [jwks_server.url]


# ---------------------------------------------------------------------------------------------- modes


def test_mode_off_never_reads_the_header(tmp_path: Path) -> None:
    authenticator = Authenticator(Settings(auth_mode="off"), MemoryReplayCache())
    assert authenticator.authenticate(None, CALLED_URL) == ANONYMOUS
    assert authenticator.authenticate("Bearer garbage", CALLED_URL) == ANONYMOUS
    assert ANONYMOUS == AuthContext(issuer=None, tenant=None, subject=None, fhir_allowlist=None)


def test_mode_optional(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    authenticator = make_auth(mode="optional")
    assert authenticator.authenticate(None, CALLED_URL) == ANONYMOUS
    assert authenticator.authenticate("", CALLED_URL) == ANONYMOUS
    assert authenticator.authenticate(bearer(keys["ES384"].sign(claims_for())), CALLED_URL).issuer == ISS
    fails(authenticator, keys["other-ES384"].sign(claims_for(), kid=keys["ES384"].kid), "signature")
    with pytest.raises(AuthError):
        authenticator.authenticate("Bearer garbage", CALLED_URL)


def test_mode_required(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    authenticator = make_auth(mode="required")
    for header in (None, "", "   "):
        with pytest.raises(AuthError) as caught:
            authenticator.authenticate(header, CALLED_URL)
        assert caught.value.check == "missing"
    assert authenticator.authenticate(bearer(keys["ES384"].sign(claims_for())), CALLED_URL).issuer == ISS


def test_default_mode_is_required_in_production_and_off_in_development(make_auth: AuthFactory) -> None:
    assert make_auth(mode=None).mode == "required"
    assert make_auth(mode=None, environment="development").mode == "off"


def test_authentication_on_without_issuers_file_fails_at_start_up() -> None:
    for mode in ("optional", "required"):
        with pytest.raises(SettingsError, match="CDS_ISSUERS_FILE"):
            Authenticator(Settings(auth_mode=mode), MemoryReplayCache())
    with pytest.raises(SettingsError):
        Authenticator(Settings(auth_mode="sometimes"), MemoryReplayCache())


# ------------------------------------------------------------------------------- CDS Hooks sandbox JWKS


@pytest.fixture
def sandbox_jwks() -> Path:
    assert SANDBOX_JWKS.exists(), f"sandbox JWKS not present at {SANDBOX_JWKS}"
    return SANDBOX_JWKS.resolve()


def sandbox_registry(jwks_file: Path) -> dict[str, Any]:
    """The worked example of docs/security.md: the sandbox issuer, keys from its published JWKS."""
    return {"issuers": [{"iss": SANDBOX_ISS, "jwks_file": str(jwks_file), "jku_allowlist": [SANDBOX_JKU]}]}


class NoNetwork(requests.Session):
    """Records fetch attempts and fails them: proves which URLs the authenticator tried to reach."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[str] = []

    def get(self, url: Any, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.attempts.append(str(url))
        raise requests.ConnectionError("network disabled in this test")


def test_sandbox_public_jwks_loads_as_an_issuer(tmp_path: Path, sandbox_jwks: Path) -> None:
    issuers = tmp_path / "issuers.yaml"
    issuers.write_text(yaml.safe_dump(sandbox_registry(sandbox_jwks)))
    authenticator = Authenticator(
        Settings(auth_mode="required", issuers_file=issuers), MemoryReplayCache(), http=NoNetwork()
    )
    assert authenticator.issuers[SANDBOX_ISS].jwks_file == sandbox_jwks


@pytest.mark.parametrize("with_jku", [False, True])
def test_token_from_another_key_is_rejected_with_the_sandbox_jwks(
    tmp_path: Path, sandbox_jwks: Path, keys: dict[str, SigningKey], with_jku: bool
) -> None:
    """A token that claims to be the sandbox (its iss, kid and jku) but is signed by another P-384 key."""
    issuers = tmp_path / "issuers.json"  # the registry may be JSON as well as YAML
    issuers.write_text(json.dumps(sandbox_registry(sandbox_jwks)))
    network = NoNetwork()
    authenticator = Authenticator(
        Settings(auth_mode="required", issuers_file=issuers), MemoryReplayCache(), http=network
    )
    headers = {"jku": SANDBOX_JKU} if with_jku else {}
    token = keys["other-ES384"].sign(claims_for(iss=SANDBOX_ISS), kid=SANDBOX_KID, headers=headers)
    fails(authenticator, token, "signature")
    assert network.attempts == []  # the kid is in the configured file: the jku is not fetched
    # A kid the file does not have: the jku, when allowlisted, is tried once (rate-limited after).
    token = keys["other-ES384"].sign(claims_for(iss=SANDBOX_ISS), headers=headers)
    fails(authenticator, token, "kid")
    assert network.attempts == ([SANDBOX_JKU] if with_jku else [])


# ---------------------------------------------------------------------------------------------- logging


@pytest.fixture
def json_log() -> Any:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("DEBUG", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_token_never_appears_in_logs(
    make_auth: AuthFactory, keys: dict[str, SigningKey], json_log: io.StringIO
) -> None:
    authenticator = make_auth()
    good = keys["ES384"].sign(claims_for())
    tokens = [
        good,
        keys["other-ES384"].sign(claims_for(), kid=keys["ES384"].kid),
        keys["ES384"].sign(claims_for(aud="https://wrong.example")),
        keys["ES384"].sign(claims_for(iss="https://evil.example")),
        keys["ES384"].sign(claims_for(), kid="nope"),
    ]
    authenticator.authenticate(bearer(good), CALLED_URL)
    for token in tokens:
        with pytest.raises(AuthError):
            authenticator.authenticate(bearer(token), CALLED_URL)
    # Defence in depth: even a careless log call does not leak it.
    logging.getLogger("cds_service.test").warning("header was %s", bearer(good), extra={"check": good})
    output = json_log.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    assert {line.get("check") for line in lines} >= {"signature", "aud", "iss", "kid", "jti-replay"}
    for token in tokens:
        assert token not in output
        assert token.split(".")[2] not in output  # not even the signature segment
    assert "[REDACTED" in output
