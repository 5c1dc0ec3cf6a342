"""The complete fever window: prefetch.resolve() against a real local HTTP FHIR server (pytest-httpserver).

The server below answers Observation searches the way a FHIR server does (code tokens, `date=ge`,
`_sort=-date`, `_count` with a server maximum, `_offset` paging with `next` links, `total`) and
records every request, so the tests assert what the service asks for and what it ends up holding.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_service.clinical.knowledge import Knowledge
from cds_service.fhir_client import FhirClient
from cds_service.prefetch import resolve
from cds_service.prefetch_window import (
    WINDOW_PAGE_SIZE,
    BundleInfo,
    is_cut_off,
    parse_instant,
    reading_instant,
    window_query,
    window_start,
)
from cds_service.registry import build_registry, prefetch_templates

TOKEN = "window-test-token-81c2"
NOW = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
KNOWLEDGE = Knowledge.load(None)
TEMPLATES = {"temperatures": prefetch_templates(KNOWLEDGE)["temperatures"]}
WINDOWS = {"temperatures": KNOWLEDGE.thresholds.fever_window_days}
FIRST_PAGE_ONLY = {"temperatures": False}


def reading(n: int, celsius: float = 36.8, code: str = "8310-5", hours_ago: float | None = None) -> dict[str, Any]:
    when = NOW - timedelta(hours=n if hours_ago is None else hours_ago)
    return {
        "resourceType": "Observation",
        "id": f"t{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": celsius, "unit": "°C", "system": "http://unitsofmeasure.org", "code": "Cel"},
    }


def hourly(count: int = 61, fever_at: int | None = 60) -> list[dict[str, Any]]:
    """`count` hourly readings, newest first (hour 0 = now); 38.9 °C at hour `fever_at`."""
    return [reading(h, 38.9 if h == fever_at else 36.8) for h in range(count)]


class Fhir:
    """Observation searches over `resources`, with paging; records (path, query params) per request."""

    def __init__(self, server: HTTPServer, max_count: int = 1000):
        self.server = server
        self.resources: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        self.auth: list[str | None] = []
        self.max_count = max_count
        self.fail_when: Any = None  # predicate on the params: answer 500
        self.delay = 0.0
        self.lock = threading.Lock()
        server.expect_request(re.compile("^/fhir/.*")).respond_with_handler(self.handle)

    @property
    def base(self) -> str:
        return self.server.url_for("/fhir")

    def handle(self, request: Request) -> Response:
        params = dict(parse_qsl(request.query_string.decode()))
        with self.lock:
            self.requests.append(params)
            self.auth.append(request.headers.get("Authorization"))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_when and self.fail_when(params):
            return Response("boom", status=500)
        found = [r for r in self.resources if r["subject"]["reference"] == f"Patient/{params['patient']}"]
        codes = set(params.get("code", "").split(","))
        found = [r for r in found if any(f"{c['system']}|{c['code']}" in codes for c in r["code"]["coding"])]
        if "date" in params:
            bound = parse_instant(params["date"].removeprefix("ge"))
            found = [r for r in found if reading_instant(r) >= bound]
        if params.get("_sort") == "-date":
            found.sort(key=reading_instant, reverse=True)
        count = min(int(params.get("_count", 20)), self.max_count)
        offset = int(params.get("_offset", 0))
        page = found[offset : offset + count]
        body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                                "entry": [{"resource": r} for r in page]}
        if offset + count < len(found):
            nxt = {**params, "_offset": str(offset + count)}
            body["link"] = [{"relation": "next", "url": f"{self.base}/Observation?{urlencode(nxt)}"}]
        return Response(json.dumps(body), content_type="application/fhir+json")


@pytest.fixture
def fhir():
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield Fhir(server)
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture(scope="module")
def client():
    c = FhirClient(timeout=2.0, max_pages=10, max_response_bytes=5_000_000)
    yield c
    c.close()


def searchset(resources: list[dict[str, Any]], total: int | None = None, next_url: str | None = None) -> dict:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                            "entry": [{"resource": r} for r in resources]}
    if total is not None:
        body["total"] = total
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def run(client: FhirClient, prefetch: dict | None, fhir: Fhir | None, *, deadline: float = 5.0,
        token: str | None = TOKEN, windows: dict[str, int] | None = None, allowlist=("http://127.0.0.1",)):
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": "x",
                            "context": {"patientId": "p1", "userId": "Practitioner/d"}}
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir is not None:
        body["fhirServer"] = fhir.base
        if token:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer"}
    return resolve(TEMPLATES, body, client, allowlist, time.monotonic() + deadline, False, FIRST_PAGE_ONLY,
                   now=NOW, windows=WINDOWS if windows is None else windows)


def latest(resources: list[dict[str, Any]], n: int = 50) -> dict:
    """What an EHR sends for the template: the latest n, with total."""
    return searchset(resources[:n], total=len(resources))


def ids(resolved) -> set[str]:
    return {r["id"] for r in resolved.by_key["temperatures"]}


# ------------------------------------------------------------------ the template and the query


def test_template_searches_every_body_temperature_code_of_the_value_set() -> None:
    template = TEMPLATES["temperatures"]
    codes = sorted(f"{s}|{c}" for s, c in KNOWLEDGE.valueset("body-temperature").token_codes)
    assert codes and f"code={','.join(codes)}&" in template
    assert "_sort=-date&_count=50" in template


def test_site_codes_reach_the_template_and_the_window_query(tmp_path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "valuesets:\n  body-temperature:\n    - {system: 'http://loinc.org', code: '8333-7'}\n"
        "    - {system: 'http://loinc.org', code: '8328-7'}\n", encoding="utf-8")
    knowledge = Knowledge.load(site)
    template = prefetch_templates(knowledge)["temperatures"]
    assert "http://loinc.org|8333-7" in template and "http://loinc.org|8328-7" in template
    query = window_query(template.replace("{{context.patientId}}", "p1"), window_start(NOW, 14))
    params = dict(parse_qsl(query.partition("?")[2]))
    assert set(params["code"].split(",")) == set(dict(parse_qsl(template.partition("?")[2]))["code"].split(","))


def test_window_query_drops_latest_n_and_bounds_the_date() -> None:
    query = window_query(TEMPLATES["temperatures"].replace("{{context.patientId}}", "p 1"), window_start(NOW, 14))
    path, _, qs = query.partition("?")
    params = parse_qsl(qs)
    assert path == "Observation"
    assert [k for k, _ in params] == ["patient", "code", "date", "_sort", "_count"]
    assert dict(params)["patient"] == "p 1"
    assert dict(params)["date"] == "ge2026-11-15"  # 14 days + 1 for any site zone, as a date
    assert dict(params)["_count"] == str(WINDOW_PAGE_SIZE)


def test_window_start_is_one_day_before_the_window() -> None:
    assert window_start(NOW, 14) == NOW - timedelta(days=15)
    assert window_start(NOW.replace(tzinfo=None), 14).tzinfo is UTC


@pytest.mark.parametrize(
    ("info", "n", "oldest_hours", "cut"),
    [
        (BundleInfo(50, None, True), 50, 400, True),  # a next link: cut off, whatever the dates
        (BundleInfo(50, 61, False), 50, 49, True),  # total above the entries
        (BundleInfo(50, 50, False), 50, 49, True),  # exactly _count, oldest inside the window
        (BundleInfo(50, None, False), 50, 15 * 24 + 1, False),  # exactly _count, oldest before the start
        (BundleInfo(50, None, False), 50, 15 * 24, False),  # boundary: oldest exactly at the start
        (BundleInfo(50, None, False), 50, 15 * 24 - 1, True),  # boundary: one hour younger
        (BundleInfo(49, 49, False), 49, 48, False),  # fewer than _count: everything there is
        (BundleInfo(0, 0, False), 0, None, False),
    ],
)
def test_cut_off(info: BundleInfo, n: int, oldest_hours: int | None, cut: bool) -> None:
    resources = [reading(h) for h in range(n - 1)]
    if oldest_hours is not None:
        resources.append(reading(999, hours_ago=oldest_hours))
    query = "Observation?patient=p1&code=x&_sort=-date&_count=50"
    assert is_cut_off(info, query, resources, window_start(NOW, 14)) is cut


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T10:00:00+02:00", datetime(2026, 11, 30, 8, 0, tzinfo=UTC)),
        ("2026-11-30T10:00:00Z", datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        ("2026-11-30T10:00:00", datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
    ],
)
def test_parse_instant(text: Any, expected: datetime | None) -> None:
    assert parse_instant(text) == expected


def test_reading_instant_prefers_effective_then_issued() -> None:
    assert reading_instant({"effectivePeriod": {"start": "2026-11-01", "end": "2026-11-02"}}) == datetime(
        2026, 11, 2, tzinfo=UTC)
    assert reading_instant({"issued": "2026-11-03T00:00:00Z"}) == datetime(2026, 11, 3, tzinfo=UTC)
    assert reading_instant({}) is None


# ------------------------------------------------------------------ resolve(): prefetch path


def test_cut_off_prefetch_is_completed_by_a_date_bounded_search(client, fhir) -> None:
    fhir.resources = hourly()
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir)
    assert ids(resolved) == {f"t{h}" for h in range(61)}
    assert len(resolved.by_key["temperatures"]) == 61  # deduplicated by id
    assert resolved.temperatures_complete_since is None
    assert resolved.missing == []
    [params] = fhir.requests
    assert params["date"] == "ge2026-11-15" and params["_sort"] == "-date"
    assert set(params["code"].split(",")) == {f"{s}|{c}" for s, c in KNOWLEDGE.valueset("body-temperature").token_codes}
    assert fhir.auth == [f"Bearer {TOKEN}"]


def test_cut_off_prefetch_without_a_server_says_from_when_it_is_complete(client) -> None:
    readings = hourly()
    resolved = run(client, {"temperatures": latest(readings)}, None)
    assert ids(resolved) == {f"t{h}" for h in range(50)}
    assert resolved.temperatures_complete_since == NOW - timedelta(hours=49)
    assert resolved.missing == []  # not an error: the uncovered days are "not documented"


@pytest.mark.parametrize("token", [None, "off-allowlist"])
def test_no_token_or_a_server_off_the_allowlist_is_not_called(client, fhir, token) -> None:
    fhir.resources = hourly()
    allowlist = ("https://ehr.example.org",) if token else ("http://127.0.0.1",)
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir, token=token and TOKEN,
                   allowlist=allowlist)
    assert fhir.requests == []
    assert resolved.temperatures_complete_since == NOW - timedelta(hours=49)


def test_prefetch_with_a_next_link_is_cut_off(client, fhir) -> None:
    fhir.resources = hourly()
    prefetch = searchset(fhir.resources[:50], next_url=f"{fhir.base}/Observation?patient=p1&_offset=50")
    resolved = run(client, {"temperatures": prefetch}, fhir)
    assert len(fhir.requests) == 1 and "date" in fhir.requests[0]  # the window, not the next link
    assert "t60" in ids(resolved) and resolved.temperatures_complete_since is None


def test_exactly_count_readings_reaching_back_far_enough_are_complete(client, fhir) -> None:
    readings = [reading(h, hours_ago=h * 8) for h in range(50)]  # 50 readings over 16 days
    resolved = run(client, {"temperatures": searchset(readings)}, fhir)
    assert fhir.requests == []
    assert resolved.temperatures_complete_since is None


def test_exactly_count_readings_without_total_inside_the_window_are_completed(client, fhir) -> None:
    fhir.resources = hourly()
    resolved = run(client, {"temperatures": searchset(fhir.resources[:50])}, fhir)
    assert len(fhir.requests) == 1 and "t60" in ids(resolved)


@pytest.mark.parametrize("value", [None, {"resourceType": "Bundle", "type": "searchset"}])
def test_no_readings_is_complete(client, fhir, value) -> None:
    resolved = run(client, {"temperatures": value}, fhir)
    assert fhir.requests == [] and resolved.temperatures_complete_since is None


def test_fever_outside_the_window_is_not_fetched(client, fhir) -> None:
    """Hourly readings for 20 days: the window search stops at its bound (day 15), the fever at day 16
    stays out; what was fetched is complete for the window."""
    fhir.resources = [reading(h, 38.9 if h == 16 * 24 else 36.8) for h in range(20 * 24)]
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir)
    assert resolved.temperatures_complete_since is None
    held = ids(resolved)
    assert f"t{15 * 24 - 1}" in held and f"t{16 * 24}" not in held
    assert len(held) == 15 * 24 + 16 + 1  # hours 0..376: everything from the bound (2026-11-15T00:00Z) on


def test_window_search_pages_and_merges(client, fhir) -> None:
    fhir.max_count = 25  # the server caps the page size: the window search pages
    fhir.resources = hourly()
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir)
    assert [p.get("_offset", "0") for p in fhir.requests] == ["0", "25", "50"]
    assert len(resolved.by_key["temperatures"]) == 61 and resolved.temperatures_complete_since is None


def test_failed_window_search_is_missing_and_says_what_is_known(client, fhir) -> None:
    fhir.resources = hourly()
    fhir.fail_when = lambda params: "date" in params
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir)
    [missing] = resolved.missing
    assert missing.key == "temperatures"
    assert missing.reason == "the readings of the last 14 days could not all be fetched: FHIR server answered HTTP 500"
    assert resolved.temperatures_complete_since == NOW - timedelta(hours=49)
    assert len(resolved.by_key["temperatures"]) == 50  # what the EHR gave is kept (partial mode)


def test_window_search_failing_on_its_second_page_keeps_the_first(client, fhir) -> None:
    fhir.max_count = 25
    fhir.resources = hourly(count=80, fever_at=None)
    fhir.fail_when = lambda params: params.get("_offset") == "50"
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir)
    assert [m.key for m in resolved.missing] == ["temperatures"]
    assert resolved.temperatures_complete_since == NOW - timedelta(hours=49)


def test_slow_window_search_ends_within_the_deadline(client, fhir) -> None:
    fhir.resources = hourly()
    fhir.delay = 3.0
    started = time.monotonic()
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir, deadline=1.0)
    assert time.monotonic() - started < 2.5
    assert [m.key for m in resolved.missing] == ["temperatures"]
    assert resolved.temperatures_complete_since == NOW - timedelta(hours=49)


def test_without_windows_nothing_is_completed(client, fhir) -> None:
    fhir.resources = hourly()
    resolved = run(client, {"temperatures": latest(fhir.resources)}, fhir, windows={})
    assert fhir.requests == [] and len(resolved.by_key["temperatures"]) == 50


# ------------------------------------------------------------------ resolve(): fallback and partial prefetch


def test_fallback_fetches_the_latest_then_the_window(client, fhir) -> None:
    fhir.resources = hourly()
    resolved = run(client, {}, fhir)
    assert [("date" in p, p["_count"]) for p in fhir.requests] == [(False, "50"), (True, str(WINDOW_PAGE_SIZE))]
    assert "t60" in ids(resolved) and len(resolved.by_key["temperatures"]) == 61
    assert resolved.temperatures_complete_since is None
    assert resolved.fetched_keys == ["temperatures"]


def test_fallback_with_few_readings_is_one_search(client, fhir) -> None:
    fhir.resources = hourly(count=12, fever_at=11)
    resolved = run(client, {}, fhir)
    assert len(fhir.requests) == 1 and len(resolved.by_key["temperatures"]) == 12
    assert resolved.temperatures_complete_since is None


def test_operation_outcome_in_prefetch_goes_through_the_fallback(client, fhir) -> None:
    fhir.resources = hourly()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    resolved = run(client, {"temperatures": outcome}, fhir)
    assert len(fhir.requests) == 2 and "t60" in ids(resolved)


def test_absent_key_without_a_server_knows_nothing(client) -> None:
    resolved = run(client, {}, None)
    assert [m.key for m in resolved.missing] == ["temperatures"]
    assert resolved.temperatures_complete_since == NOW


def test_registry_declares_the_fever_window_from_the_thresholds() -> None:
    services = build_registry(KNOWLEDGE)
    for service in services.values():
        assert service.windows == {"temperatures": KNOWLEDGE.thresholds.fever_window_days}
        assert "temperatures" in service.first_page_only
        assert service.prefetch["medicationStatements"].startswith("MedicationStatement?patient={{context.patientId}}")
        assert "questionnaire=" not in service.prefetch["questionnaireResponses"]
