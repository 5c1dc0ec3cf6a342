"""Discovery, invocation error statuses and operational endpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hookreq import SERVICE_FOR_HOOK, empty_prefetch, hook_request

SERVICES = {"lbp-patient-view": "patient-view", "lbp-imaging-order-select": "order-select",
            "lbp-imaging-order-sign": "order-sign"}


def _templates(client, service_id):
    services = client.get("/cds-services").get_json()["services"]
    return next(s for s in services if s["id"] == service_id)["prefetch"]


def test_discovery_lists_three_services_with_narrow_prefetch(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    assert {s["id"]: s["hook"] for s in services} == SERVICES
    for service in services:
        assert service["description"] and service["title"]
        for key, template in service["prefetch"].items():
            assert "{{context.patientId}}" in template, key
            if not template.startswith("Patient/"):
                assert "patient={{context.patientId}}" in template, key
        # a latest value is enough for labs: sorted and counted
        assert "_sort=-date&_count=" in service["prefetch"]["crp"]
        assert "http://loinc.org|1988-5" in service["prefetch"]["crp"]
    order = next(s for s in services if s["id"] == "lbp-imaging-order-select")
    assert {"imagingStudies", "procedures", "diagnosticReports"} <= set(order["prefetch"])
    view = next(s for s in services if s["id"] == "lbp-patient-view")
    assert "imagingStudies" not in view["prefetch"]


@pytest.mark.parametrize("hook", sorted(SERVICE_FOR_HOOK))
def test_each_hook_answers_with_full_prefetch(client, hook):
    service = SERVICE_FOR_HOOK[hook]
    body = hook_request(hook, prefetch=empty_prefetch(_templates(client, service)))
    response = client.post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200, response.get_json()
    assert isinstance(response.get_json()["cards"], list)


def test_malformed_json_is_400(client):
    response = client.post("/cds-services/lbp-patient-view", data=b'{"hook": ', content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed-json"


def test_non_utf8_body_is_400(client):
    response = client.post("/cds-services/lbp-patient-view", data=b'{"hook": "\xff\xfe"}',
                           content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(hookInstance=5), "$.hookInstance"),
        (lambda b: b.pop("context"), "$.context"),
        (lambda b: b["context"].pop("patientId"), "$.context.patientId"),
        (lambda b: b["context"].update(patientId=["p1"]), "$.context.patientId"),
        (lambda b: b["context"].update(userId="p1"), "$.context.userId"),
        (lambda b: b.update(prefetch=[]), "$.prefetch"),
        (lambda b: b.update(prefetch={"patient": "Patient/p1"}), "$.prefetch.patient"),
        (lambda b: b.update(fhirServer="http://127.0.0.1/fhir", fhirAuthorization={"access_token": "t"}),
         "$.fhirAuthorization.token_type"),
        (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer", "expires_in": 1,
                                               "scope": "s", "subject": "s"}), "$.fhirServer"),
        (lambda b: b.update(fhirServer="ftp://x"), "$.fhirServer"),
    ],
)
def test_wrong_types_name_the_field(client, mutate, field):
    body = hook_request("patient-view")
    mutate(body)
    response = client.post("/cds-services/lbp-patient-view", json=body)
    assert response.status_code == 400
    payload = response.get_json()
    assert payload["field"] == field, payload
    assert field in payload["message"]


def test_wrong_hook_for_service_is_400(client):
    body = hook_request("patient-view")
    response = client.post("/cds-services/lbp-imaging-order-select", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "wrong-hook"


def test_draft_orders_must_be_a_bundle(client):
    body = hook_request("order-sign")
    body["context"]["draftOrders"] = {"resourceType": "ServiceRequest"}
    response = client.post("/cds-services/lbp-imaging-order-sign", json=body)
    assert response.status_code == 400
    assert response.get_json()["field"].startswith("$.context.draftOrders")


def test_selections_must_point_into_draft_orders(client):
    body = hook_request("order-select", selections=["ServiceRequest/not-there"])
    response = client.post("/cds-services/lbp-imaging-order-select", json=body)
    assert response.status_code == 400
    assert response.get_json()["field"] == "$.context.selections[0]"


def test_unknown_service_is_404(client):
    response = client.post("/cds-services/nope", json=hook_request())
    assert response.status_code == 404
    assert response.get_json()["error"] == "unknown-service"
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404


def test_not_json_is_415(client):
    response = client.post("/cds-services/lbp-patient-view", data="hook=patient-view",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.get_json()["field"] == "Content-Type"


def test_body_over_limit_is_413(make_app):
    app = make_app(max_request_bytes=2048)
    body = hook_request()
    body["extension"] = {"padding": "x" * 4096}
    response = app.test_client().post("/cds-services/lbp-patient-view", data=json.dumps(body),
                                      content_type="application/json")
    assert response.status_code == 413
    assert "2048" in response.get_json()["message"]


def test_unknown_path_and_method_are_json(client):
    assert client.get("/nothing-here").status_code == 404
    response = client.get("/cds-services/lbp-patient-view")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method-not-allowed"


def test_internal_errors_carry_no_stack_trace(app, client):
    service = app.extensions["cds"].services["lbp-patient-view"]

    def explode(_inp):
        raise RuntimeError("secret internals")

    app.extensions["cds"].services["lbp-patient-view"] = dataclasses.replace(service, evaluate=explode)
    body = hook_request(prefetch=empty_prefetch(service.prefetch))
    response = client.post("/cds-services/lbp-patient-view", json=body)
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "secret internals" not in text and "Traceback" not in text
    assert response.get_json()["requestId"] == response.headers["X-Request-ID"]


def test_health_ready_and_openapi(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready", "database": "ok", "schema": "current"}
    spec = client.get("/openapi.yaml")
    assert spec.status_code == 200 and b"openapi: 3.1.0" in spec.data


def test_readyz_reports_unreachable_database(make_app):
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"


def test_security_headers_and_no_server_version(client):
    response = client.get("/cds-services")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Werkzeug" not in response.headers.get("Server", "")


def test_openapi_document_is_valid():
    from conftest import REPO
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    document, _ = read_from_filename(str(REPO / "openapi.yaml"))
    validate(document)
    assert {"/cds-services", "/cds-services/{id}", "/cds-services/{id}/feedback", "/healthz", "/readyz"} <= set(
        document["paths"]
    )


def test_metrics_count_requests_and_cards(app, client):
    service = app.extensions["cds"].services["lbp-patient-view"]
    client.post("/cds-services/lbp-patient-view", json=hook_request(prefetch=empty_prefetch(service.prefetch)))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'cds_request_duration_seconds_count{endpoint="lbp-patient-view",status="200"}' in text
    assert "cds_fhir_query_duration_seconds" in text


def test_bench_floor_exists_only_when_enabled(client, make_app):
    assert client.post("/_bench/floor", json={"a": 1}).status_code == 404
    floor = make_app(bench_floor=True).test_client().post("/_bench/floor", json={"a": 1})
    assert floor.status_code == 200 and floor.get_json() == {"cards": []}


def test_production_refuses_to_start_on_an_unmigrated_schema(make_app, tmp_path):
    """Issue 17 item 6: production does not change the schema on its own, and no longer starts on a
    schema `cds-service migrate` has not brought up (it used to answer hooks and lose every record)."""
    from cds_service import cli
    from cds_service.store import SchemaNotMigrated

    with pytest.raises(SchemaNotMigrated, match="cds-service migrate"):
        make_app(environment="production", auth_mode="off", auto_migrate=False)
    assert cli.main(["migrate", "--database-url", f"sqlite:///{tmp_path / 'cds.sqlite3'}"]) == 0
    app = make_app(environment="production", auth_mode="off", auto_migrate=False)
    assert app.test_client().get("/readyz").get_json()["status"] == "ready"


def test_production_with_auto_migrate_migrates_at_start(make_app):
    app = make_app(environment="production", auth_mode="off", auto_migrate=True)
    assert app.test_client().get("/readyz").status_code == 200
