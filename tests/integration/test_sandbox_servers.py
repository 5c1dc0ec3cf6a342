"""The sandbox FHIR servers answer every search the CDS service makes, correctly.

Each test runs against every server of the session (sekmet-fhir and Medplum's router, or the
server named by CDS_TEST_FHIR_SERVER). The data is tests/integration/data/sandbox-smoke.json:
patients sbx-alpha and sbx-beta have the same kinds of resources, so a search that ignores
`patient` shows up as the other patient's ids; sbx-sort has Observations whose dates differ in
timezone offset, precision and type (dateTime / Period / none).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
import requests

from cds_service.tooling.sandbox import SERVERS, SandboxServer

from .conftest import HTTP_TIMEOUT, STRICT, FhirTarget, ids, matches, next_link, target_names

QUESTIONNAIRE = "http://example.org/fhir/lbp-cds/Questionnaire/back-pain-assessment"
PHQ9 = "http://example.org/fhir/Questionnaire/phq-9"
SCT = "http://snomed.info/sct"
ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
A = "sbx-alpha"


def managed_only(server: FhirTarget) -> None:
    assert server.managed, "deselected for external servers by the managed_only marker"


# ------------------------------------------------------------------ metadata and authentication


def test_metadata_answers_without_token(fhir_server: FhirTarget) -> None:
    response = fhir_server.get("metadata", token=None)
    assert response.status_code == 200
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"].startswith("4.0")


@pytest.mark.needs_token
@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_bearer_token_required(fhir_server: FhirTarget, token: str | None) -> None:
    response = fhir_server.get(f"Patient/{A}", token=token)
    assert response.status_code == 401, response.text[:300]
    assert response.json()["resourceType"] == "OperationOutcome"
    assert fhir_server.get(f"Patient/{A}").status_code == 200


@pytest.mark.managed_only
def test_bearer_token_required_for_writes_and_searches(fhir_server: FhirTarget) -> None:
    managed_only(fhir_server)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    assert fhir_server.request("POST", fhir_server.base_url, token=None, json=bundle).status_code == 401
    assert fhir_server.get(f"Condition?patient={A}", token="x").status_code == 401


# ------------------------------------------------------------------ sekmet 0.1.1 search-parameter gaps

# (query, expected ids): each registered parameter on its own picks exactly one of the patient's two
# resources, so a parameter the server ignored would return both.
GAP_SEARCHES = [
    (f"FamilyMemberHistory?patient={A}", {"sbx-alpha-fmh-father", "sbx-alpha-fmh-mother"}),
    ("FamilyMemberHistory?patient=sbx-beta", {"sbx-beta-fmh-father"}),
    (f"FamilyMemberHistory?patient=Patient/{A}&relationship={ROLE}|MTH", {"sbx-alpha-fmh-mother"}),
    (f"FamilyMemberHistory?patient={A}&code={SCT}|9631008", {"sbx-alpha-fmh-father"}),
    (f"FamilyMemberHistory?patient={A}&status=partial", {"sbx-alpha-fmh-mother"}),
    (f"FamilyMemberHistory?patient={A}&date=lt2023-01-01", {"sbx-alpha-fmh-mother"}),
    (f"FamilyMemberHistory?patient={A}&date=ge2023-01-01", {"sbx-alpha-fmh-father"}),
    (f"QuestionnaireResponse?patient={A}", {"sbx-alpha-qr-lbp", "sbx-alpha-qr-other"}),
    ("QuestionnaireResponse?patient=sbx-beta", {"sbx-beta-qr-lbp"}),
    ("QuestionnaireResponse?subject=Patient/sbx-beta", {"sbx-beta-qr-lbp"}),
    (f"QuestionnaireResponse?patient={A}&questionnaire={PHQ9}", {"sbx-alpha-qr-other"}),
    (f"QuestionnaireResponse?patient={A}&questionnaire={QUESTIONNAIRE}", {"sbx-alpha-qr-lbp"}),
    (f"QuestionnaireResponse?patient={A}&status=in-progress", {"sbx-alpha-qr-other"}),
    (f"QuestionnaireResponse?patient={A}&authored=lt2024-01-01", {"sbx-alpha-qr-other"}),
    (f"QuestionnaireResponse?patient={A}&authored=ge2024-01-01", {"sbx-alpha-qr-lbp"}),
]


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize(("query", "expected"), GAP_SEARCHES, ids=[q for q, _ in GAP_SEARCHES])
def test_family_history_and_questionnaire_response_searches(
    fhir_server: FhirTarget, query: str, expected: set[str], strict: bool
) -> None:
    """Strict: the parameter must be known. Lenient (what a client sends by default): it must not be
    ignored either (unpatched sekmet 0.1.1 ignored it and answered every patient's resources)."""
    bundle = fhir_server.search(query, strict=strict)
    assert set(ids(bundle)) == expected
    outcomes = [e for e in bundle.get("entry") or [] if e.get("search", {}).get("mode") == "outcome"]
    assert not outcomes, f"the server reported an ignored parameter: {outcomes}"


@pytest.mark.servers("sekmet")
def test_sekmet_capability_lists_the_registered_parameters(fhir_server: FhirTarget) -> None:
    capability = fhir_server.get("metadata", token=None).json()
    params = {r["type"]: {p["name"] for p in r.get("searchParam", [])} for r in capability["rest"][0]["resource"]}
    assert {"patient", "relationship", "code", "status", "date"} <= params["FamilyMemberHistory"]
    assert {"patient", "subject", "questionnaire", "status", "authored"} <= params["QuestionnaireResponse"]


# ------------------------------------------------------------------ Prefer: handling=strict

STRICT_ERRORS = [
    "Patient?no-such-parameter=x",
    f"Observation?patient={A}&_sort=-no-such-parameter",
    "FamilyMemberHistory?no-such-parameter=x",
]


@pytest.mark.parametrize("query", STRICT_ERRORS)
def test_strict_handling_rejects_unknown_parameters(fhir_server: FhirTarget, query: str) -> None:
    response = fhir_server.get(query, headers=STRICT)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.managed_only
def test_lenient_handling_of_unknown_parameters_is_as_documented(fhir_server: FhirTarget) -> None:
    """docs/sandbox.md: without `Prefer: handling=strict` sekmet ignores an unknown parameter (with an
    OperationOutcome warning entry) and so answers every patient's resources; Medplum matches nothing."""
    managed_only(fhir_server)
    bundle = fhir_server.search(f"Condition?patient={A}&no-such-parameter=x", strict=False)
    if fhir_server.name == "sekmet":
        assert ids(bundle) == ["sbx-alpha-lbp"]
        assert [e for e in bundle["entry"] if e.get("search", {}).get("mode") == "outcome"]
    else:
        assert ids(bundle) == []


@pytest.mark.servers("medplum")
def test_medplum_strict_rejects_what_its_memory_repository_cannot_match(fhir_server: FhirTarget) -> None:
    for query in (f"Observation?patient={A}&value-quantity=gt5", f"Observation?patient={A}&code:text=crp"):
        response = fhir_server.get(query, headers=STRICT)
        assert response.status_code == 400, query


# ------------------------------------------------------------------ the prefetch template searches

CRP = "http://loinc.org|1988-5,http://loinc.org|30522-7"
FINDINGS = f"{SCT}|161891005,{SCT}|102491009"
PREFETCH_SEARCHES = [
    (f"Condition?patient={A}", ["sbx-alpha-lbp"]),
    (f"Observation?patient={A}&code={FINDINGS}", ["sbx-alpha-finding-1", "sbx-alpha-finding-2"]),
    (f"MedicationRequest?patient={A}", ["sbx-alpha-nsaid"]),
    (f"FamilyMemberHistory?patient={A}", ["sbx-alpha-fmh-father", "sbx-alpha-fmh-mother"]),
    (f"QuestionnaireResponse?patient={A}&questionnaire={QUESTIONNAIRE}", ["sbx-alpha-qr-lbp"]),
    (f"ServiceRequest?patient={A}", ["sbx-alpha-sr-physio"]),
    (f"Procedure?patient={A}", ["sbx-alpha-proc"]),
    (f"ImagingStudy?patient={A}", ["sbx-alpha-img"]),
    (f"DiagnosticReport?patient={A}", ["sbx-alpha-dr"]),
]


def test_patient_read(fhir_server: FhirTarget) -> None:
    response = fhir_server.get(f"Patient/{A}")
    assert response.status_code == 200
    assert response.json()["id"] == A
    assert fhir_server.get("Patient/sbx-no-such-patient").status_code == 404


@pytest.mark.parametrize(("query", "expected"), PREFETCH_SEARCHES, ids=[q.split("?")[0] for q, _ in PREFETCH_SEARCHES])
def test_prefetch_search(fhir_server: FhirTarget, query: str, expected: list[str]) -> None:
    assert sorted(r["id"] for r in fhir_server.search_all(query)) == sorted(expected)


def test_latest_crp_search_sorts_and_limits(fhir_server: FhirTarget) -> None:
    bundle = fhir_server.search(f"Observation?patient={A}&code={CRP}&_sort=-date&_count=5")
    assert ids(bundle) == [f"sbx-alpha-crp-{n}" for n in (7, 6, 5, 4, 3)]
    if "total" in bundle:
        assert bundle["total"] == 7
    assert next_link(bundle), "5 of 7 matches: a next link is expected"


@pytest.mark.managed_only
def test_date_sort_uses_instants_not_text(fhir_server: FhirTarget) -> None:
    """Timezone offsets, month precision, a Period and a missing date (docs/sandbox.md, Medplum gap)."""
    managed_only(fhir_server)
    descending = ids(fhir_server.search("Observation?patient=sbx-sort&_sort=-date"))
    assert descending == [
        "sbx-sort-month",
        "sbx-sort-offset",
        "sbx-sort-utc",
        "sbx-sort-period",
        "sbx-sort-none",
    ]
    ascending = ids(fhir_server.search("Observation?patient=sbx-sort&_sort=date"))
    assert ascending == [
        "sbx-sort-period",
        "sbx-sort-utc",
        "sbx-sort-offset",
        "sbx-sort-month",
        "sbx-sort-none",
    ]


def test_every_search_result_belongs_to_the_patient(fhir_server: FhirTarget) -> None:
    for query, _ in PREFETCH_SEARCHES:
        for resource in fhir_server.search_all(query.replace(A, "sbx-beta")):
            subject = resource.get("subject") or resource.get("patient") or {}
            assert subject.get("reference", "").endswith("Patient/sbx-beta"), (query, resource["id"])


def test_real_prefetch_templates_are_valid_searches(fhir_server: FhirTarget) -> None:
    """Every template of the service registry, filled for sbx-alpha, is accepted under strict handling."""
    from cds_service.clinical.knowledge import Knowledge
    from cds_service.registry import prefetch_templates

    templates = prefetch_templates(Knowledge.load(None))
    for key, template in templates.items():
        query = template.replace("{{context.patientId}}", A)
        response = fhir_server.get(query, headers=STRICT)
        assert response.status_code == 200, f"{key}: {query} -> {response.status_code} {response.text[:300]}"
        if not query.startswith("Patient/"):
            for resource in matches(response.json()):
                subject = resource.get("subject") or resource.get("patient") or {}
                assert subject.get("reference", "").endswith(f"Patient/{A}"), (key, resource["id"])


# ------------------------------------------------------------------ paging


def test_paging_next_links_work(fhir_server: FhirTarget) -> None:
    first = fhir_server.search(f"Observation?patient={A}&_count=2")
    assert len(ids(first)) == 2
    link = next_link(first)
    assert link, "no next link on the first page"
    assert urlsplit(link).netloc == urlsplit(fhir_server.base_url).netloc
    pages, seen, url = 0, [], f"Observation?patient={A}&_count=2"
    while url:
        bundle = fhir_server.search(url)
        page = ids(bundle)
        assert 1 <= len(page) <= 2 or (pages == 0 and not page)
        seen += page
        url = next_link(bundle)
        pages += 1
        assert pages <= 20
    assert len(seen) == len(set(seen)) == 11, seen
    assert all(i.startswith("sbx-alpha-") for i in seen)


# ------------------------------------------------------------------ transactions


@pytest.mark.managed_only
def test_transaction_is_all_or_nothing(fhir_server: FhirTarget) -> None:
    managed_only(fhir_server)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "sbx-atomic"},
                "request": {"method": "PUT", "url": "Patient/sbx-atomic"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "sbx-atomic-bad"},
                "request": {"method": "PUT", "url": "Observation/sbx-atomic-bad"},
            },
        ],
    }
    response = fhir_server.request(
        "POST", fhir_server.base_url, json=bundle, headers={"Content-Type": "application/fhir+json"}
    )
    assert 400 <= response.status_code < 500, response.text[:300]
    assert fhir_server.get("Patient/sbx-atomic").status_code in (404, 410)


# ------------------------------------------------------------------ process lifecycle


@pytest.mark.parametrize("name", [n for n in target_names() if n in SERVERS])
def test_server_starts_and_stops_cleanly(name: str) -> None:
    with SandboxServer(name, startup_timeout=60) as server:
        process = server.process
        assert process is not None and process.poll() is None
        response = requests.get(f"{server.base_url}/metadata", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200
    assert server.process is None
    assert process.poll() is not None, "the server process is still running"
    with socket.socket() as sock:
        sock.settimeout(1)
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0, "the port still accepts connections"
