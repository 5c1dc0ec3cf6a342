"""Every fixture patient on every hook gives the same cards whether the EHR prefetched or not.

The fixture patients are loaded (dates shifted to today) into each real FHIR server of the session.
For every patient and hook the service is called with
  * full prefetch (built in memory from the fixture, as the EHR would, with its fhirServer and token
    beside it): the manifest's cards,
  * no prefetch (fhirServer + fhirAuthorization): the service fetches everything from the server,
  * partial prefetch: half the keys absent, or (the other half) answered with an OperationOutcome,
    which the service must fetch too,
and the cards must be identical (but for per-call uuids), and the expected ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.tooling.fixtures import build_request

from .conftest import (
    FhirTarget,
    FixtureSet,
    comparable_cards,
    discovery,
    fixture_slugs,
    hooks_for,
    no_prefetch_request,
    topics,
)
from .faultproxy import Fault, FaultProxy

OPERATION_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "timeout", "diagnostics": "the EHR could not prefetch this"}],
}
SLUGS = fixture_slugs()
# A few patients, one per card family, for the slower checks (paging, token on every call).
SAMPLE = [
    s
    for s in (
        "axspa-four-criteria",
        "acute-nonspecific-mri-2wk",
        "red-flag-malignancy-history",
        "fever-temperature-38",
        "prior-imaging-study-mri",
    )
    if s in SLUGS
]


def call(client: Any, service: dict[str, Any], request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/cds-services/{service['id']}", json=request)
    return response.status_code, response.get_json(silent=True) or {}


def partial(request: dict[str, Any], keep_even: bool) -> dict[str, Any]:
    """Drop every other prefetch key: absent (keep_even) or replaced by an OperationOutcome."""
    prefetch = request["prefetch"]
    keys = sorted(prefetch)
    out = dict(request)
    if keep_even:
        out["prefetch"] = {k: prefetch[k] for i, k in enumerate(keys) if i % 2 == 0}
    else:
        out["prefetch"] = {k: (OPERATION_OUTCOME if i % 2 == 0 else prefetch[k]) for i, k in enumerate(keys)}
    return out


@pytest.mark.parametrize("slug", SLUGS)
def test_no_and_partial_prefetch_give_the_full_prefetch_cards(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any, slug: str
) -> None:
    client = cds_app.test_client()
    services = discovery(client)
    spec = loaded_fixtures.manifest.get(slug)
    fixture = loaded_fixtures.loaded[slug]
    for hook in hooks_for(spec):
        service = services[hook]
        no_prefetch = no_prefetch_request(fixture, hook, service, fhir_server.base_url, fhir_server.token)
        # as an EHR sends it: the prefetch AND its FHIR server, so a "latest N" search cut off short of
        # the fever window can be completed (fixtures/build_rev2_fetch.py: ward patients)
        full_request = build_request(fixture, hook, service["prefetch"])
        full_request["fhirServer"] = fhir_server.base_url
        full_request.pop("fhirAuthorization", None)
        if fhir_server.token:
            full_request["fhirAuthorization"] = dict(no_prefetch["fhirAuthorization"])
        status, full = call(client, service, full_request)
        assert status == 200, (hook, full)
        assert topics(full) == spec.expected(hook), f"{hook}: full prefetch gave {topics(full)}"
        expected = comparable_cards(full)

        variants = {
            "no prefetch": no_prefetch,
            "half absent": partial(full_request, keep_even=True),
            "half OperationOutcome": partial(full_request, keep_even=False),
        }
        for name, request in variants.items():
            status, body = call(client, service, request)
            assert status == 200, f"{hook}, {name}: HTTP {status} {body}"
            assert comparable_cards(body) == expected, (
                f"{hook}, {name}: cards differ from full prefetch: {topics(body)} vs {topics(full)}"
            )


@pytest.mark.needs_token
@pytest.mark.parametrize("slug", SAMPLE)
def test_token_sent_on_every_call_and_paging_followed(
    fhir_server: FhirTarget, loaded_fixtures: FixtureSet, cds_app: Any, slug: str
) -> None:
    """Through a recording proxy that forces one resource per page (so every multi-result search pages
    through real `next` links): same cards, and every FHIR call carried the bearer token."""
    client = cds_app.test_client()
    services = discovery(client)
    spec = loaded_fixtures.manifest.get(slug)
    fixture = loaded_fixtures.loaded[slug]

    def one_per_page(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return params if any(k == "_count" for k, _ in params) else [*params, ("_count", "1")]

    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.fault = lambda path: Fault.rewrite_query(one_per_page) if "?" in path else None
        for hook in hooks_for(spec):
            service = services[hook]
            _, full = call(client, service, build_request(fixture, hook, service["prefetch"]))
            proxy.reset()
            request = no_prefetch_request(fixture, hook, service, proxy.base_url, fhir_server.token)
            status, body = call(client, service, request)
            assert status == 200, (hook, body)
            assert comparable_cards(body) == comparable_cards(full), f"{hook}: {topics(body)} vs {topics(full)}"
            records = list(proxy.records)
            fetched = {r.path.split("?")[0] for r in records}
            for template in service["prefetch"].values():
                assert template.split("?")[0].replace("{{context.patientId}}", fixture.patient_id) in fetched
            for record in records:
                assert record.headers.get("Authorization") == f"Bearer {fhir_server.token}", record.path
                assert record.status == 200, (record.path, record.status)
            prefetched = build_request(fixture, hook, service["prefetch"])["prefetch"]
            if any(len(v.get("entry") or []) > 1 for v in prefetched.values() if v.get("resourceType") == "Bundle"):
                assert len(records) > len(service["prefetch"]), "a search with 2+ matches should have paged"
