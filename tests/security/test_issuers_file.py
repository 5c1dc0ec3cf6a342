"""The trusted-issuer registry is validated at start-up, and the URL rules it relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_service.auth import TrustedIssuer, load_issuers
from cds_service.settings import SettingsError
from cds_service.urls import check_service_url, normalise_url, url_has_prefix

from .conftest import SigningKey

ISS = "https://ehr.example.org"


@pytest.fixture
def jwks_file(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    path = tmp_path / "keys" / "ehr-jwks.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"keys": [keys["ES384"].public_jwk]}))
    return path


def write(tmp_path: Path, data: Any, name: str = "issuers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return path


def test_full_entry_yaml_with_relative_jwks_file(tmp_path: Path, jwks_file: Path) -> None:
    path = write(
        tmp_path,
        {
            "issuers": [
                {
                    "iss": ISS,
                    "jwks_file": "keys/ehr-jwks.json",
                    "jku_allowlist": ["https://ehr.example.org/.well-known/jwks.json"],
                    "tenant": "clinic-a",
                    "fhir_allowlist": ["https://fhir.ehr.example.org/r4", "http://127.0.0.1:8081/fhir"],
                },
                {"iss": "https://other.example", "jwks_url": "https://other.example/jwks"},
            ]
        },
    )
    issuers = load_issuers(path)
    assert issuers[ISS] == TrustedIssuer(
        iss=ISS,
        jwks_file=jwks_file.resolve(),
        jku_allowlist=("https://ehr.example.org/.well-known/jwks.json",),
        tenant="clinic-a",
        fhir_allowlist=("https://fhir.ehr.example.org/r4", "http://127.0.0.1:8081/fhir"),
    )
    assert issuers["https://other.example"].fhir_allowlist is None


def test_json_registry(tmp_path: Path) -> None:
    path = write(tmp_path, {"issuers": [{"iss": ISS, "jwks_url": "https://ehr.example.org/jwks"}]}, "i.json")
    assert load_issuers(path)[ISS].jwks_url == "https://ehr.example.org/jwks"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"iss": ISS, "jwks_uri": "https://ehr.example.org/jwks"}, "unknown field"),
        ({"jwks_url": "https://ehr.example.org/jwks"}, "'iss'"),
        ({"iss": ISS}, "needs jwks_url, jwks_file or jku_allowlist"),
        ({"iss": ISS, "jwks_url": "https://a.example/j", "jwks_file": "x.json"}, "not both"),
        ({"iss": ISS, "jwks_url": "http://ehr.example.org/jwks"}, "https"),
        ({"iss": ISS, "jku_allowlist": ["http://ehr.example.org/"]}, "https"),
        ({"iss": ISS, "jku_allowlist": "ftp://ehr.example.org/"}, "https"),
        ({"iss": ISS, "jwks_url": "https://u:p@ehr.example.org/jwks"}, "credentials"),
        (
            {"iss": ISS, "jwks_url": "https://a.example/j", "fhir_allowlist": ["http://fhir.example/r4"]},
            "https",
        ),
        ({"iss": ISS, "jwks_url": "https://a.example/j", "fhir_allowlist": [""]}, "list of URL"),
        ({"iss": ISS, "jwks_url": "https://a.example/j", "tenant": 5}, "tenant"),
        ({"iss": ISS, "jwks_file": "missing.json"}, "not a usable JWKS"),
    ],
)
def test_invalid_entries_fail_at_start_up(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_issuers(write(tmp_path, {"issuers": [entry]}))


def test_duplicate_issuer(tmp_path: Path) -> None:
    entry = {"iss": ISS, "jwks_url": "https://ehr.example.org/jwks"}
    with pytest.raises(SettingsError, match="twice"):
        load_issuers(write(tmp_path, {"issuers": [entry, entry]}))


@pytest.mark.parametrize("content", ["issuers: {}", "- a", "issuers: [1]", "{{{{"])
def test_malformed_registry(tmp_path: Path, content: str) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError):
        load_issuers(path)


def test_jwks_file_without_usable_keys(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    symmetric = {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}
    no_kid = {"keys": [{k: v for k, v in keys["ES384"].public_jwk.items() if k != "kid"}]}
    private = {"keys": [{**keys["ES384"].public_jwk, "d": "AAAA"}]}
    encryption = {"keys": [{**keys["ES384"].public_jwk, "use": "enc"}]}
    for index, jwks in enumerate([symmetric, no_kid, private, encryption, {"keys": []}, []]):
        jwks_path = tmp_path / f"jwks-{index}.json"
        jwks_path.write_text(json.dumps(jwks))
        with pytest.raises(SettingsError, match="not a usable JWKS"):
            load_issuers(write(tmp_path, {"issuers": [{"iss": ISS, "jwks_file": str(jwks_path)}]}))


@pytest.mark.parametrize(
    ("url", "prefix", "expected"),
    [
        ("https://ehr.example.org/jwks.json", "https://ehr.example.org/jwks.json", True),
        ("https://ehr.example.org/keys/jwks.json", "https://ehr.example.org/keys/", True),
        ("https://ehr.example.org/keys/jwks.json", "https://ehr.example.org/keys", True),
        ("https://EHR.example.org:443/keys/a", "https://ehr.example.org/keys", True),
        ("https://ehr.example.org/keys-evil/a", "https://ehr.example.org/keys", False),
        ("https://ehr.example.org.evil.example/keys/a", "https://ehr.example.org", False),
        ("https://ehr.example.org@evil.example/keys/a", "https://ehr.example.org", False),
        ("https://ehr.example.org:8443/keys/a", "https://ehr.example.org/keys", False),
        ("http://ehr.example.org/keys/a", "http://ehr.example.org/keys", False),  # plain http off loopback
        ("http://localhost:8080/keys/a", "http://localhost:8080/keys", True),
        ("https://ehr.example.org/keys/../admin", "https://ehr.example.org/keys", False),
        ("https://ehr.example.org/keys/%2e%2e/admin", "https://ehr.example.org/keys", False),
        ("https://ehr.example.org/keys/a#frag", "https://ehr.example.org/keys", False),
        ("https://ehr.example.org/jwks.json?x=1", "https://ehr.example.org/jwks.json?x=1", True),
        ("https://ehr.example.org/jwks.json?x=2", "https://ehr.example.org/jwks.json?x=1", False),
        ("file:///etc/passwd", "https://ehr.example.org", False),
        ("not a url", "https://ehr.example.org", False),
    ],
)
def test_url_has_prefix(url: str, prefix: str, expected: bool) -> None:
    assert url_has_prefix(url, prefix) is expected


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://CDS.example.org:443/cds-services/x/", "https://cds.example.org/cds-services/x"),
        ("http://localhost:80/", "http://localhost"),
        ("http://[::1]:8080/cds-services", "http://[::1]:8080/cds-services"),
        ("https://cds.example.org/a#frag", "https://cds.example.org/a"),
        ("urn:example:aud", None),
        ("https://cds.example.org:99999/", None),
    ],
)
def test_normalise_url(url: str, normalised: str | None) -> None:
    assert normalise_url(url) == normalised


def test_check_service_url_accepts_https_and_loopback_http() -> None:
    for url in (
        "https://fhir.example.org/r4",
        "http://127.0.0.1:8080/fhir",
        "http://localhost/fhir",
        "http://[::1]/",
    ):
        assert check_service_url(url, "test") == url
    for url in ("http://10.0.0.5/fhir", "ftp://x.example", "https:///nohost"):
        with pytest.raises(SettingsError):
            check_service_url(url, "test")
