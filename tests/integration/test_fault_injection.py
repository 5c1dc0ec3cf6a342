"""Faults between the service and a real FHIR server (injected by a loopback proxy in front of it).

Each case sends a fixture patient with no prefetch, so the service must fetch everything, through
`FaultProxy`, which forwards to the session's real server except for the injected fault. The
service must answer 412 naming the key that could not be had (or, with CDS_ON_MISSING_DATA=partial,
cards marked incomplete), within its deadline, and never call a URL off its allowlist.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import FhirTarget, FixtureSet, discovery, fixture_slugs, no_prefetch_request, topics
from .faultproxy import Fault, FaultProxy, TrapServer

SLUG = "axspa-four-criteria"  # patient-view with conditions, observations, questionnaire, family history
assert SLUG in fixture_slugs(), f"fixture {SLUG} is missing from fixtures/manifest.yaml"

# Generous for a loaded 2-core machine (every other query must still succeed through the proxy);
# the slow-server case waits TIMEOUT, not longer.
TIMEOUT = 2.0
DEADLINE = 4.0


@pytest.fixture(scope="module")
def fault_app(make_cds_app: Any) -> Any:
    return make_cds_app(fhir_timeout_seconds=TIMEOUT, deadline_seconds=DEADLINE)


@pytest.fixture(scope="module")
def partial_app(make_cds_app: Any) -> Any:
    return make_cds_app(fhir_timeout_seconds=TIMEOUT, deadline_seconds=DEADLINE, on_missing_data="partial")


def invoke(app: Any, loaded: FixtureSet, base_url: str, token: str | None) -> tuple[int, dict[str, Any], float]:
    client = app.test_client()
    service = discovery(client)["patient-view"]
    request = no_prefetch_request(loaded.loaded[SLUG], "patient-view", service, base_url, token)
    started = time.monotonic()
    response = client.post(f"/cds-services/{service['id']}", json=request)
    return response.status_code, response.get_json(silent=True) or {}, time.monotonic() - started


def missing(body: dict[str, Any]) -> dict[str, str]:
    return {m["key"]: m["reason"] for m in body.get("missing", [])}


def only(prefix: str, fault: Fault):
    return lambda path: fault if path.startswith(prefix) else None


def test_baseline_through_the_proxy(fhir_server: FhirTarget, loaded_fixtures: FixtureSet, fault_app: Any) -> None:
    with FaultProxy(fhir_server.base_url) as proxy:
        status, body, _ = invoke(fault_app, loaded_fixtures, proxy.base_url, fhir_server.token)
    assert status == 200, body
    assert topics(body) == loaded_fixtures.manifest.get(SLUG).expected("patient-view")


@pytest.mark.parametrize(
    ("prefix", "fault", "key", "reason"),
    [
        ("Condition", Fault.http(500), "conditions", "HTTP 500"),
        ("FamilyMemberHistory", Fault.http(503), "familyHistory", "HTTP 503"),
        ("QuestionnaireResponse", Fault.malformed(), "questionnaireResponses", "malformed JSON"),
        ("MedicationRequest", Fault.drop(), "medications", "FHIR server"),
        ("ServiceRequest", Fault.delay(TIMEOUT + 1), "serviceRequests", "timed out"),
    ],
    ids=["http-500", "http-503", "malformed-json", "connection-dropped", "slow-server"],
)
def test_a_failing_search_gives_412_naming_the_key(
    fhir_server: FhirTarget,
    loaded_fixtures: FixtureSet,
    fault_app: Any,
    prefix: str,
    fault: Fault,
    key: str,
    reason: str,
) -> None:
    with FaultProxy(fhir_server.base_url, fault=only(prefix, fault)) as proxy:
        status, body, elapsed = invoke(fault_app, loaded_fixtures, proxy.base_url, fhir_server.token)
    assert status == 412, body
    assert body["error"] == "prefetch-unavailable"
    assert list(missing(body)) == [key], body
    assert reason in missing(body)[key]
    assert elapsed < DEADLINE + 1.0, f"answered after {elapsed:.1f} s, deadline {DEADLINE} s"


@pytest.mark.needs_token
def test_wrong_token_is_refused_by_the_real_server(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, fault_app: Any
) -> None:
    status, body, _ = invoke(fault_app, loaded_fixtures, fhir_server.base_url, "not-the-token")
    assert status == 412, body
    reasons = missing(body)
    assert reasons and all("HTTP 401" in r for r in reasons.values()), reasons
    assert set(reasons) == set(discovery(fault_app.test_client())["patient-view"]["prefetch"])


def test_partial_mode_answers_cards_marked_incomplete(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, partial_app: Any
) -> None:
    with FaultProxy(fhir_server.base_url, fault=only("FamilyMemberHistory", Fault.http(500))) as proxy:
        status, body, _ = invoke(partial_app, loaded_fixtures, proxy.base_url, fhir_server.token)
    assert status == 200, body
    assert body["cards"], "expected the patient's cards, computed from partial data"
    for card in body["cards"]:
        assert "data incomplete" in card["detail"].lower(), card["detail"]


def test_redirect_off_the_allowlist_is_not_followed(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, fault_app: Any
) -> None:
    with TrapServer() as trap, FaultProxy(fhir_server.base_url) as proxy:
        proxy.fault = only("Condition", Fault.redirect(f"{trap.base_url}/Condition?patient=x"))
        status, body, _ = invoke(fault_app, loaded_fixtures, proxy.base_url, fhir_server.token)
    assert status == 412, body
    assert list(missing(body)) == ["conditions"]
    assert "allowlist" in missing(body)["conditions"]
    assert trap.hits == [], "the service followed a redirect off its allowlist"


def test_next_link_off_the_allowlist_is_not_followed(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, fault_app: Any
) -> None:
    with TrapServer() as trap, FaultProxy(fhir_server.base_url) as proxy:

        def poisoned_next(body: bytes) -> bytes:
            import json

            bundle = json.loads(body)
            bundle["link"] = [link for link in bundle.get("link", []) if link.get("relation") != "next"]
            bundle["link"].append({"relation": "next", "url": f"{trap.base_url}/Condition?page=2"})
            return json.dumps(bundle).encode()

        proxy.fault = only("Condition", Fault.rewrite_body(poisoned_next))
        status, body, _ = invoke(fault_app, loaded_fixtures, proxy.base_url, fhir_server.token)
    assert status == 412, body
    assert list(missing(body)) == ["conditions"]
    assert trap.hits == [], "the service followed a next link off its allowlist"


def _self_next(body: bytes) -> bytes:
    """A Bundle whose `next` link points back at the same search, on the proxy: paging never ends."""
    import json

    bundle = json.loads(body)
    self_url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "self"), None)
    bundle["link"] = [{"relation": "next", "url": self_url or "Condition?patient=x&again=1"}]
    return json.dumps(bundle).encode()


def _padded(body: bytes) -> bytes:
    """The same Bundle padded past the service's response size cap with valid, irrelevant entries."""
    import json

    bundle = json.loads(body)
    filler = {"resource": {"resourceType": "Basic", "id": "filler", "code": {"text": "x" * 1000}}}
    bundle["entry"] = (bundle.get("entry") or []) + [filler] * 400
    return json.dumps(bundle).encode()


@pytest.mark.parametrize(
    ("prefix", "fault", "key", "reason"),
    [
        ("Condition", Fault.http(403), "conditions", "HTTP 403"),
        ("Patient", Fault.http(404), "patient", "HTTP 404"),
        ("Condition", Fault.rewrite_body(_self_next), "conditions", "stopped after 3 pages"),
        ("Condition", Fault.endless(DEADLINE + 1), "conditions", "deadline|size limit"),
        ("Condition", Fault.rewrite_body(_padded), "conditions", "size limit"),
    ],
    ids=["http-403", "patient-404", "page-that-never-ends", "body-that-never-ends", "huge-response"],
)
def test_more_faults_end_in_412_within_the_deadline(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, make_cds_app: Any, caplog: pytest.LogCaptureFixture,
    prefix: str, fault: Fault, key: str, reason: str,
) -> None:
    app = make_cds_app(fhir_timeout_seconds=TIMEOUT, deadline_seconds=DEADLINE, fhir_max_pages=3,
                       fhir_max_response_bytes=200_000, log_level="DEBUG")
    with caplog.at_level("DEBUG"), FaultProxy(fhir_server.base_url, fault=only(prefix, fault)) as proxy:
        status, body, elapsed = invoke(app, loaded_fixtures, proxy.base_url, fhir_server.token)
    assert status == 412, body
    assert list(missing(body)) == [key], body
    assert any(option in missing(body)[key] for option in reason.split("|")), missing(body)
    assert elapsed < DEADLINE + 1.0, f"answered after {elapsed:.1f} s, deadline {DEADLINE} s"
    assert fhir_server.token not in caplog.text


def test_server_down_gives_412_for_every_key_at_once(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, fault_app: Any
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    status, body, elapsed = invoke(fault_app, loaded_fixtures, closed, fhir_server.token)
    assert status == 412, body
    reasons = missing(body)
    assert set(reasons) == set(discovery(fault_app.test_client())["patient-view"]["prefetch"])
    assert all("unreachable" in r for r in reasons.values()), reasons
    assert elapsed < TIMEOUT, "connection refused must not wait for a timeout"
