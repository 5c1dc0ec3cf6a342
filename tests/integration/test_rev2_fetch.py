"""Clinical rules rev 2, the FHIR-access half, against the real sandbox servers (sekmet and Medplum).

The fixture patients of fixtures/build_rev2_fetch.py are loaded (dates shifted to today) with the
others. Here the service's own prefetch resolution (`cds_service.prefetch.resolve`, with the
service's discovery templates, its FhirClient and the fever window of its registry) runs on them
through a recording proxy, and the tests assert what this layer guarantees on each path (full
prefetch with a FHIR server, no prefetch, partial prefetch, prefetch without a usable server):
which readings it holds, `temperatures_complete_since`, and the searches it made. The cards each
patient gets on every path are checked by test_fixture_equivalence.py against the manifest.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest

from cds_service.prefetch import resolve
from cds_service.prefetch_window import reading_instant, window_start
from cds_service.tooling.fixtures import build_request

from .conftest import FhirTarget, FixtureSet, discovery, matches
from .faultproxy import FaultProxy

WARD = [
    "fever-ward-hour-60",
    "fever-ward-hourly-afebrile",
    "fever-ward-tympanic",
    "fever-ward-fahrenheit",
    "fever-ward-day-13",
    "fever-ward-day-15",
]
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
QUESTIONNAIRE = "http://example.org/fhir/lbp-cds/Questionnaire/back-pain-assessment"


class Layer:
    """resolve() exactly as the patient-view service calls it, on one fixture, through a proxy."""

    def __init__(self, cds_app: Any, fixtures: FixtureSet, slug: str, proxy: FaultProxy | None):
        self.rt = cds_app.extensions["cds"]
        self.service = self.rt.services["lbp-patient-view"]
        self.fixture = fixtures.loaded[slug]
        self.proxy = proxy
        self.templates = discovery(cds_app.test_client())["patient-view"]["prefetch"]
        assert self.templates == self.service.prefetch

    def request(self, prefetch: bool, token: str | None) -> dict[str, Any]:
        base = self.proxy.base_url if self.proxy else "http://127.0.0.1:9/fhir"
        body = build_request(self.fixture, "patient-view", self.templates, with_prefetch=prefetch, fhir_server=base)
        body["fhirServer"] = base
        body.pop("fhirAuthorization", None)
        if token:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer"}
        return body

    def resolve(self, body: dict[str, Any], now: datetime) -> Any:
        if self.proxy:
            self.proxy.reset()
        return resolve(
            self.service.prefetch,
            body,
            self.rt.fhir,
            self.rt.settings.fhir_allowlist,
            deadline=time.monotonic() + self.rt.settings.deadline_seconds,
            allow_open_servers=False,
            follow_paging={k: k not in self.service.first_page_only for k in self.service.prefetch},
            now=now,
            windows=self.service.windows,
        )

    def temperature_codes(self) -> set[str]:
        return {f"{s}|{c}" for s, c in self.rt.knowledge.valueset("body-temperature").token_codes}

    def readings(self) -> list[dict[str, Any]]:
        """The fixture's temperature readings under a code of the value set, newest first."""
        codes = self.temperature_codes()
        found = [
            r for r in self.fixture.resources
            if r["resourceType"] == "Observation"
            and any(f"{c['system']}|{c['code']}" in codes for c in r["code"]["coding"])
        ]
        return sorted(found, key=reading_instant, reverse=True)

    def searches(self) -> list[dict[str, str]]:
        """The temperature searches the proxy saw (Observation searches for the value set's codes)."""
        assert self.proxy is not None
        found = [dict(parse_qsl(r.path.partition("?")[2])) for r in self.proxy.records
                 if r.path.startswith("Observation?")]
        return [p for p in found if set(p.get("code", "").split(",")) == self.temperature_codes()]


def held(resolved: Any) -> list[str]:
    return sorted(r["id"] for r in resolved.by_key["temperatures"])


def in_window(readings: list[dict[str, Any]], now: datetime, days: int) -> list[str]:
    bound = datetime.combine(window_start(now, days).date(), datetime.min.time(), UTC)
    return sorted(r["id"] for r in readings if reading_instant(r) >= bound)


@pytest.mark.parametrize("slug", WARD)
def test_ward_patient_window_is_completed_on_every_path(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any, slug: str
) -> None:
    now = datetime.now(UTC)
    with FaultProxy(fhir_server.base_url) as proxy:
        layer = Layer(cds_app, loaded_fixtures, slug, proxy)
        days = layer.service.windows["temperatures"]
        readings = layer.readings()
        assert len(readings) > 50, (
            "the fixture must exceed the template's latest 50 under the value set's codes (every body-temperature "
            "code of spec §7 must be in cds_service/data/valuesets/body-temperature.json)"
        )
        expected = sorted(set(in_window(readings, now, days)) | {r["id"] for r in readings[:50]})
        full = layer.request(prefetch=True, token=fhir_server.token)
        assert full["prefetch"]["temperatures"]["total"] == len(readings)
        assert len(full["prefetch"]["temperatures"]["entry"]) == 50

        # full prefetch, cut off: one date-bounded search completes it
        resolved = layer.resolve(full, now)
        assert resolved.missing == []
        assert held(resolved) == expected
        assert resolved.temperatures_complete_since is None
        [search] = layer.searches()
        assert search["date"] == f"ge{window_start(now, days).date().isoformat()}"
        assert set(search["code"].split(",")) == layer.temperature_codes()
        assert "_count" in search and search["_sort"] == "-date"

        # no prefetch: the template's latest 50, then the window
        resolved = layer.resolve(layer.request(prefetch=False, token=fhir_server.token), now)
        assert resolved.missing == [] and resolved.temperatures_complete_since is None
        assert held(resolved) == expected
        assert [("date" in s, s.get("_count")) for s in layer.searches()] == [(False, "50"), (True, "500")]

        # partial prefetch: temperatures answered with an OperationOutcome, or absent
        for value in (OUTCOME, None):
            body = layer.request(prefetch=True, token=fhir_server.token)
            if value is None:
                del body["prefetch"]["temperatures"]
            else:
                body["prefetch"]["temperatures"] = value
            del body["prefetch"]["conditions"]
            resolved = layer.resolve(body, now)
            assert resolved.missing == [], resolved.missing
            assert held(resolved) == expected and resolved.temperatures_complete_since is None


@pytest.mark.parametrize("slug", ["fever-ward-hour-60", "fever-ward-day-13"])
def test_without_a_usable_server_the_window_is_known_incomplete(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any, slug: str
) -> None:
    """Prefetch only (no fhirServer), or a server but no token: no call; the 50 readings held and the
    instant from which they are complete (the oldest of them) — the fever behind them is not seen."""
    now = datetime.now(UTC)
    with FaultProxy(fhir_server.base_url) as proxy:
        layer = Layer(cds_app, loaded_fixtures, slug, proxy)
        readings = layer.readings()
        fever = [r["id"] for r in readings if r["valueQuantity"]["value"] >= 38]
        body = layer.request(prefetch=True, token=None)
        resolved = layer.resolve(body, now)
        assert proxy.records == []
        assert held(resolved) == sorted(r["id"] for r in readings[:50])
        assert resolved.temperatures_complete_since == reading_instant(readings[49])
        assert resolved.temperatures_complete_since > window_start(now, layer.service.windows["temperatures"])
        assert not set(fever) & set(held(resolved))
        assert resolved.missing == []
        del body["fhirServer"]
        assert layer.resolve(body, now).temperatures_complete_since == reading_instant(readings[49])


def test_a_failing_window_search_is_missing_data(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any
) -> None:
    from .faultproxy import Fault

    now = datetime.now(UTC)
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.fault = lambda path: Fault.http(503) if "date=ge" in path else None
        layer = Layer(cds_app, loaded_fixtures, "fever-ward-hour-60", proxy)
        readings = layer.readings()
        resolved = layer.resolve(layer.request(prefetch=True, token=fhir_server.token), now)
        assert [m.key for m in resolved.missing] == ["temperatures"]
        assert "HTTP 503" in resolved.missing[0].reason
        assert resolved.temperatures_complete_since == reading_instant(readings[49])


def test_versioned_questionnaire_response_is_found_without_prefetch(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any
) -> None:
    slug = "cauda-equina-questionnaire-versioned"
    patient = loaded_fixtures.loaded[slug].patient_id
    # why the template no longer searches by canonical: the server matches it exactly
    exact = fhir_server.search(f"QuestionnaireResponse?patient={patient}&questionnaire={QUESTIONNAIRE}")
    assert matches(exact) == []
    with FaultProxy(fhir_server.base_url) as proxy:
        layer = Layer(cds_app, loaded_fixtures, slug, proxy)
        resolved = layer.resolve(layer.request(prefetch=False, token=fhir_server.token), datetime.now(UTC))
        assert resolved.missing == []
        [response] = resolved.by_key["questionnaireResponses"]
        assert response["questionnaire"] == f"{QUESTIONNAIRE}|1.0.0"
        # the other form's response is fetched too; the clinical reader ignores it by canonical
        other = resolve_other(cds_app, loaded_fixtures, proxy, fhir_server)
        assert sorted(r["questionnaire"] for r in other) == [
            f"{QUESTIONNAIRE}|2.1.0",
            "http://example.org/fhir/other-site/Questionnaire/neuro-screen|1.0.0",
        ]


def resolve_other(cds_app: Any, fixtures: FixtureSet, proxy: FaultProxy, fhir_server: FhirTarget) -> list[dict]:
    layer = Layer(cds_app, fixtures, "questionnaire-versioned-other-form", proxy)
    resolved = layer.resolve(layer.request(prefetch=False, token=fhir_server.token), datetime.now(UTC))
    assert resolved.missing == []
    return resolved.by_key["questionnaireResponses"]


@pytest.mark.parametrize(
    ("slug", "drug"),
    [("radicular-otc-nsaid-statement-mri", "ibuprofen"), ("fracture-steroid-statement-4-months", "prednisolone")],
)
def test_medication_statements_are_fetched(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any, slug: str, drug: str
) -> None:
    with FaultProxy(fhir_server.base_url) as proxy:
        layer = Layer(cds_app, loaded_fixtures, slug, proxy)
        resolved = layer.resolve(layer.request(prefetch=False, token=fhir_server.token), datetime.now(UTC))
        assert resolved.missing == []
        [statement] = resolved.by_key["medicationStatements"]
        assert statement["medicationCodeableConcept"]["text"] == drug
        prefetched = layer.resolve(layer.request(prefetch=True, token=None), datetime.now(UTC))
        assert [r["id"] for r in prefetched.by_key["medicationStatements"]] == [statement["id"]]
        assert proxy.records == []  # the full prefetch made no call


def test_medication_statement_status_filter_leaves_out_entered_in_error(fhir_server: FhirTarget) -> None:
    """The template's status list, under strict handling, on a statement per status."""
    from cds_service.registry import STATEMENT_STATUSES

    patient = "sbx-ms-status"
    statuses = ["active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken"]
    entries = [{"resource": {"resourceType": "Patient", "id": patient},
                "request": {"method": "PUT", "url": f"Patient/{patient}"}}]
    for status in statuses:
        entries.append({
            "resource": {"resourceType": "MedicationStatement", "id": f"{patient}-{status}", "status": status,
                         "medicationCodeableConcept": {"text": "ibuprofen"},
                         "subject": {"reference": f"Patient/{patient}"}},
            "request": {"method": "PUT", "url": f"MedicationStatement/{patient}-{status}"},
        })
    response = fhir_server.request("POST", fhir_server.base_url, json={
        "resourceType": "Bundle", "type": "transaction", "entry": entries},
        headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text[:300]
    found = fhir_server.search_all(f"MedicationStatement?patient={patient}&status={STATEMENT_STATUSES}")
    assert sorted(r["status"] for r in found) == sorted(set(statuses) - {"entered-in-error", "not-taken"})
