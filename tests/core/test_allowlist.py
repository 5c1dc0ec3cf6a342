"""The FHIR server allowlist matches parsed URLs, not strings."""

import pytest

from cds_service.urls import url_allowed

LOOPBACK = ("http://127.0.0.1", "http://localhost")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8090/fhir", True),
        ("http://localhost/fhir", True),
        ("http://127.0.0.1.evil.example/fhir", False),
        ("http://127.0.0.1@evil.example/fhir", False),
        ("http://evil.example/fhir", False),
        ("ftp://127.0.0.1/fhir", False),
        ("not a url", False),
    ],
)
def test_loopback_defaults(url, allowed):
    assert url_allowed(url, LOOPBACK) is allowed


def test_path_prefix_is_matched_on_segments():
    prefixes = ("https://ehr.example.org/fhir",)
    assert url_allowed("https://ehr.example.org/fhir/Patient/1", prefixes)
    assert url_allowed("https://ehr.example.org/fhir", prefixes)
    assert not url_allowed("https://ehr.example.org/fhirevil/Patient/1", prefixes)
    assert not url_allowed("https://ehr.example.org/other", prefixes)


def test_plain_http_only_for_loopback():
    assert not url_allowed("http://ehr.example.org/fhir", ("http://ehr.example.org",))
    assert url_allowed("http://[::1]:9000/fhir", ("http://[::1]",))


def test_port_in_prefix_must_match():
    assert url_allowed("https://ehr.example.org:8443/fhir", ("https://ehr.example.org:8443",))
    assert not url_allowed("https://ehr.example.org:9443/fhir", ("https://ehr.example.org:8443",))
