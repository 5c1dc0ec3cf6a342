"""Fixtures for the authentication tests: keys generated per session, JWKS served over real HTTP.

No key material is checked in: every private key is generated here with `cryptography`, and the JWKS
is served by pytest-httpserver on localhost, so the HTTP path (timeouts, size cap, no redirects) is
exercised for real.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_service.auth import Authenticator, MemoryReplayCache, ReplayCache
from cds_service.settings import Settings

ISS = "https://ehr.example.org"
CALLED_URL = "https://cds.example.org/cds-services/lbp-imaging"
JWKS_PATH = "/ehr/.well-known/jwks.json"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class SigningKey:
    """A generated private key, its kid/alg, and its public JWK."""

    kid: str
    alg: str
    private: Any
    public_jwk: dict[str, Any] = field(default_factory=dict)

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        drop_headers: tuple[str, ...] = (),
    ) -> str:
        header: dict[str, Any] = {"typ": "JWT", "kid": kid or self.kid}
        header.update(headers or {})
        for name in drop_headers:
            header.pop(name, None)
        if "typ" in drop_headers:
            header["typ"] = None  # PyJWT adds typ JWT unless told not to
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=header)


def _make_key(alg: str) -> SigningKey:
    kid = f"{alg.lower()}-{uuid.uuid4()}"
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        private: Any = ec.generate_private_key(curve)
        public_jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    public_jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid=kid, alg=alg, private=private, public_jwk=public_jwk)


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    """One key per algorithm family used by the matrix, plus 'other' keys that are never published."""
    return {
        "ES384": _make_key("ES384"),
        "RS384": _make_key("RS384"),
        "PS256": _make_key("PS256"),
        "ES256": _make_key("ES256"),
        "other-ES384": _make_key("ES384"),
        "other-RS384": _make_key("RS384"),
    }


PUBLISHED = ("ES384", "RS384", "PS256", "ES256")


def claims_for(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid claim set for CALLED_URL; overrides set (or, with value ..., remove) claims."""
    current = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": CALLED_URL,
        "iat": current,
        "exp": current + 300,
        "jti": str(uuid.uuid4()),
        "sub": "ehr-client-42",
    }
    for name, value in overrides.items():
        if value is ...:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


class JwksServer:
    """The EHR's JWKS endpoint: contents can change between calls; requests are counted."""

    def __init__(self, server: HTTPServer, path: str, jwks: dict[str, Any]):
        self.server = server
        self.path = path
        self.jwks = jwks
        self.status = 200
        server.expect_request(path).respond_with_handler(self._respond)

    def _respond(self, request: Request) -> Response:
        return Response(json.dumps(self.jwks), status=self.status, content_type="application/json")

    @property
    def url(self) -> str:
        return self.server.url_for(self.path)

    @property
    def hits(self) -> int:
        return sum(1 for request, _ in self.server.log if request.path == self.path)


@pytest.fixture
def jwks_server(httpserver: HTTPServer, keys: dict[str, SigningKey]) -> JwksServer:
    return JwksServer(httpserver, JWKS_PATH, {"keys": [keys[name].public_jwk for name in PUBLISHED]})


@pytest.fixture
def attacker_server() -> Iterator[HTTPServer]:
    """A second host on another port that must never receive a request."""
    server = HTTPServer()
    server.expect_request("/jwks.json").respond_with_json({"keys": []})
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


AuthFactory = Callable[..., Authenticator]


@pytest.fixture
def make_auth(tmp_path: Path, jwks_server: JwksServer) -> AuthFactory:
    """Build an Authenticator from an issuers file written to tmp_path.

    By default one issuer (ISS) whose keys are at the local JWKS server. ``issuers`` replaces the
    list; ``mode`` sets CDS_AUTH_MODE; other keyword arguments override Settings fields.
    """

    def factory(
        issuers: list[dict[str, Any]] | None = None,
        mode: str | None = "required",
        replay_cache: ReplayCache | None = None,
        **overrides: Any,
    ) -> Authenticator:
        entries = issuers if issuers is not None else [{"iss": ISS, "jwks_url": jwks_server.url}]
        issuers_file = tmp_path / f"issuers-{uuid.uuid4().hex}.yaml"
        issuers_file.write_text(yaml.safe_dump({"issuers": entries}), encoding="utf-8")
        settings = Settings(auth_mode=mode, issuers_file=issuers_file, **overrides)
        return Authenticator(settings, replay_cache or MemoryReplayCache())

    return factory
