"""Prefetch states and the FHIR fallback, against a real local HTTP server (pytest-httpserver)."""

from __future__ import annotations

import json
import re
import threading
import time
from urllib.parse import parse_qs

import pytest
from hookreq import empty_prefetch, hook_request
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

TOKEN = "test-access-token-3f9a"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1990-05-01"}


def bundle(resources, next_url=None):
    body = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


class FakeFhir:
    """Records every request; answers by resource type with configurable behaviour."""

    def __init__(self, server: HTTPServer):
        self.server = server
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.delay = 0.0
        self.barrier: threading.Barrier | None = None
        self.pages: dict[str, list[dict]] = {}
        server.expect_request("/fhir/metadata").respond_with_json({"resourceType": "CapabilityStatement"})
        server.expect_request(re.compile("^/fhir/.*")).respond_with_handler(self.handle)

    @property
    def base(self) -> str:
        return self.server.url_for("/fhir")

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.requests.append(request)
        if self.barrier is not None:
            try:
                self.barrier.wait(timeout=3)
            except threading.BrokenBarrierError:
                return Response("sequential", status=500)
        if self.delay:
            time.sleep(self.delay)
        kind = request.path.removeprefix("/fhir/").split("/")[0]
        if kind == "Patient":
            return Response(json.dumps(PATIENT), content_type="application/fhir+json")
        page = parse_qs(request.query_string.decode()).get("page", ["0"])[0]
        pages = self.pages.get(kind)
        if pages:
            index = int(page)
            next_url = f"{self.base}/{kind}?patient=p1&page={index + 1}" if index + 1 < len(pages) else None
            return Response(json.dumps(bundle([pages[index]], next_url)), content_type="application/fhir+json")
        return Response(json.dumps(bundle([])), content_type="application/fhir+json")

    def paths(self) -> list[str]:
        return [r.path.removeprefix("/fhir/") for r in self.requests]


@pytest.fixture
def fhir():
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    fake = FakeFhir(server)
    yield fake
    server.clear()
    if server.is_running():
        server.stop()


def templates(app, service_id="lbp-patient-view"):
    return app.extensions["cds"].services[service_id].prefetch


def post(client, body, service="lbp-patient-view"):
    return client.post(f"/cds-services/{service}", json=body)


def test_full_prefetch_makes_no_fhir_call(app, client, fhir):
    body = hook_request(prefetch=empty_prefetch(templates(app)), fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert fhir.requests == []


def test_absent_keys_are_fetched_with_the_bearer_token(app, client, fhir):
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"], prefetch["patient"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert sorted(fhir.paths()) == ["Condition", "Patient/p1"]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fhir.requests)
    assert all(r.headers["Prefer"] == "handling=strict" for r in fhir.requests)
    condition = next(r for r in fhir.requests if r.path.endswith("Condition"))
    assert condition.args["patient"] == "p1"


def test_null_and_empty_bundle_mean_no_data(app, client, fhir):
    prefetch = empty_prefetch(templates(app))
    prefetch["conditions"] = None
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert fhir.requests == []


def test_operation_outcome_is_treated_as_absent(app, client, fhir):
    prefetch = empty_prefetch(templates(app))
    prefetch["medications"] = {"resourceType": "OperationOutcome",
                               "issue": [{"severity": "error", "code": "timeout"}]}
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert fhir.paths() == ["MedicationRequest"]


def test_paged_search_follows_next_links(app, client, fhir):
    fhir.pages["Condition"] = [
        {"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": "Patient/p1"},
         "code": {"text": "unrelated"}} for i in range(3)
    ]
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert [r.args.get("page", "0") for r in fhir.requests] == ["0", "1", "2"]


def test_paged_prefetch_bundle_is_completed_from_the_server(app, client, fhir):
    fhir.pages["Condition"] = [{"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": "Patient/p1"}}
                               for i in range(2)]
    prefetch = empty_prefetch(templates(app))
    prefetch["conditions"] = bundle([fhir.pages["Condition"][0]], f"{fhir.base}/Condition?patient=p1&page=1")
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert [r.args.get("page") for r in fhir.requests] == ["1"]


def test_paging_is_capped_and_an_unfinished_search_is_not_obtained(make_app, fhir):
    app = make_app(fhir_max_pages=2)
    fhir.pages["Condition"] = [{"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": "Patient/p1"}}
                               for i in range(6)]
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    response = app.test_client().post("/cds-services/lbp-patient-view", json=body)
    assert response.status_code == 412
    assert response.get_json()["missing"] == [
        {"key": "conditions", "reason": "stopped after 2 pages: the search did not end"}
    ]
    assert len(fhir.requests) == 2
    partial = make_app(fhir_max_pages=2, on_missing_data="partial")
    assert partial.test_client().post("/cds-services/lbp-patient-view", json=body).status_code == 200


def test_latest_only_keys_do_not_follow_paging(app, client, fhir):
    fhir.pages["Observation"] = [{"resourceType": "Observation", "id": f"o{i}", "status": "final",
                                  "code": {"text": "x"}} for i in range(3)]
    prefetch = empty_prefetch(templates(app))
    del prefetch["crp"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    assert post(client, body).status_code == 200
    assert len(fhir.requests) == 1


def test_missing_keys_are_fetched_in_parallel(app, client, fhir):
    """Five missing keys: the server only answers once all five requests are in flight at once."""
    prefetch = empty_prefetch(templates(app))
    missing = ["conditions", "medications", "familyHistory", "serviceRequests", "findings"]
    for key in missing:
        del prefetch[key]
    fhir.barrier = threading.Barrier(len(missing))
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    response = post(client, body)
    assert response.status_code == 200, response.get_json()
    assert len(fhir.requests) == len(missing)


def test_slow_server_ends_in_412_within_the_deadline(make_app, fhir):
    app = make_app(fhir_timeout_seconds=0.5, deadline_seconds=1.0)
    fhir.delay = 3.0
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    started = time.monotonic()
    response = app.test_client().post("/cds-services/lbp-patient-view", json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 412
    assert response.get_json()["missing"][0]["key"] == "conditions"
    assert "timed out" in response.get_json()["missing"][0]["reason"] or "deadline" in \
        response.get_json()["missing"][0]["reason"]
    assert elapsed < 2.5  # bounded by the deadline, not by the server's 3 s


def test_missing_data_without_fhir_server_is_412(app, client):
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    response = post(client, hook_request(prefetch=prefetch))
    assert response.status_code == 412
    assert response.get_json()["missing"] == [
        {"key": "conditions", "reason": "not in prefetch and no fhirServer was sent"}
    ]


def test_fhir_server_off_the_allowlist_is_never_called(make_app, fhir):
    app = make_app(fhir_allowlist=("https://ehr.example.org/fhir",))
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN)
    response = app.test_client().post("/cds-services/lbp-patient-view", json=body)
    assert response.status_code == 412
    assert "allowlist" in response.get_json()["missing"][0]["reason"]
    assert fhir.requests == []


def test_open_server_is_called_only_when_configured(make_app, fhir):
    prefetch_app = make_app()
    prefetch = empty_prefetch(templates(prefetch_app))
    del prefetch["conditions"]
    body = hook_request(prefetch=prefetch, fhir_server=fhir.base)
    assert prefetch_app.test_client().post("/cds-services/lbp-patient-view", json=body).status_code == 412
    assert fhir.requests == []
    open_app = make_app(allow_open_fhir_servers=True)
    assert open_app.test_client().post("/cds-services/lbp-patient-view", json=body).status_code == 200
    assert "Authorization" not in fhir.requests[0].headers


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_failing_server_gives_412_with_reason(app, client, fhir, status):
    fhir.server.clear()
    fhir.server.expect_request(re.compile("^/fhir/.*")).respond_with_data("no", status=status)
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    response = post(client, hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN))
    assert response.status_code == 412
    assert f"HTTP {status}" in response.get_json()["missing"][0]["reason"]


def test_malformed_json_from_server_gives_412(app, client, fhir):
    fhir.server.clear()
    fhir.server.expect_request(re.compile("^/fhir/.*")).respond_with_data(
        "{not json", content_type="application/fhir+json")
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    response = post(client, hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN))
    assert response.status_code == 412
    assert "malformed JSON" in response.get_json()["missing"][0]["reason"]


def test_partial_mode_answers_with_cards_from_what_was_obtained(make_app, fhir):
    app = make_app(on_missing_data="partial")
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    response = app.test_client().post("/cds-services/lbp-patient-view", json=hook_request(prefetch=prefetch))
    assert response.status_code == 200


def test_redirect_off_the_allowlist_is_not_followed(app, client, fhir):
    fhir.server.clear()
    fhir.server.expect_request(re.compile("^/fhir/.*")).respond_with_data(
        "", status=302, headers={"Location": "http://evil.example.org/fhir/Condition"})
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    response = post(client, hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN))
    assert response.status_code == 412
    assert "allowlist" in response.get_json()["missing"][0]["reason"]


def test_prefetched_patient_must_match_context(app, client):
    prefetch = empty_prefetch(templates(app))
    prefetch["patient"] = {**PATIENT, "id": "someone-else"}
    response = post(client, hook_request(prefetch=prefetch))
    assert response.status_code == 400
    assert response.get_json()["field"] == "$.prefetch.patient"


def test_bundle_with_malformed_entry_from_server_gives_412(app, client, fhir):
    fhir.server.clear()
    fhir.server.expect_request(re.compile("^/fhir/.*")).respond_with_json(
        {"resourceType": "Bundle", "type": "searchset", "entry": 7})
    prefetch = empty_prefetch(templates(app))
    del prefetch["conditions"]
    response = post(client, hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN))
    assert response.status_code == 412
    assert "entry is not an array" in response.get_json()["missing"][0]["reason"]


def test_token_is_not_sent_to_another_allowlisted_host(make_app, fhir):
    """A next link to a different (allowlisted) server is followed without the EHR's bearer token."""
    other = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    other.start()
    try:
        other.expect_request(re.compile("^/fhir/.*")).respond_with_json(bundle([]))
        fhir.server.clear()
        fhir.server.expect_request(re.compile("^/fhir/.*")).respond_with_json(
            bundle([], next_url=other.url_for("/fhir/Condition?page=2")))
        app = make_app()
        prefetch = empty_prefetch(templates(app))
        del prefetch["conditions"]
        response = app.test_client().post("/cds-services/lbp-patient-view",
                                          json=hook_request(prefetch=prefetch, fhir_server=fhir.base, token=TOKEN))
        assert response.status_code == 200
        [first] = [r for r, _ in fhir.server.log]
        [second] = [r for r, _ in other.log]
        assert first.headers["Authorization"] == f"Bearer {TOKEN}"
        assert "Authorization" not in second.headers
    finally:
        other.clear()
        other.stop()
