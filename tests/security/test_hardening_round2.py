"""Issue 15 (security hardening, round 2), the in-process items: nesting depth, exact id patterns,
request ids that could be identifiers, capped array counts, the operator token, and the `aud` 401
that names the expected audience (issue 17). The on-the-wire items (slow clients, header limits) are
in test_slow_clients.py and test_http_hardening.py; JWKS eviction in test_jwt.py.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from flask import Flask
from hookreq import empty_prefetch, hook_request, lumbar_mri

from cds_service.logging_setup import configure_logging
from cds_service.protocol import MAX_NESTING_DEPTH
from cds_service.request_ids import is_safe_request_id, request_id

from .conftest import CALLED_URL, AuthFactory, SigningKey, claims_for
from .test_jwt import fails

VIEW = "/cds-services/lbp-patient-view"
SELECT = "/cds-services/lbp-imaging-order-select"
SIGN = "/cds-services/lbp-imaging-order-sign"
FEEDBACK = VIEW + "/feedback"
DEEP = "__DEEP__"  # replaced in the serialised body by the nested value


def _post_raw(app: Flask, path: str, body: dict[str, Any], deep: bytes | None = None) -> Any:
    raw = orjson.dumps(body)
    if deep is not None:
        assert raw.count(b'"__DEEP__"') == 1
        raw = raw.replace(b'"__DEEP__"', deep)
    return app.test_client().post(path, data=raw, content_type="application/json")


def _view(app: Flask) -> dict[str, Any]:
    return hook_request(prefetch=empty_prefetch(app.extensions["cds"].services["lbp-patient-view"].prefetch))


def _select(app: Flask, orders: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    templates = app.extensions["cds"].services["lbp-imaging-order-select"].prefetch
    return hook_request("order-select", prefetch=empty_prefetch(templates), orders=orders, **kw)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


# ------------------------------------------------------------------------ (3) nesting at any depth


def _nested(kind: str, levels: int) -> bytes:
    if kind == "array":
        return b"[" * levels + b"1" + b"]" * levels
    return b'{"a":' * levels + b"1" + b"}" * levels


def _placements(app: Flask) -> dict[str, tuple[str, dict[str, Any]]]:
    """Where a deep value can sit: prefetch values and resources, context fields, orders, feedback."""
    with_prefetch_value = _view(app)
    with_prefetch_value["prefetch"]["patient"] = DEEP
    in_resource = _view(app)
    in_resource["prefetch"]["patient"]["name"] = DEEP
    in_bundle = _view(app)
    in_bundle["prefetch"]["conditions"]["entry"] = [DEEP]
    context_field = _view(app)
    context_field["context"]["patientId"] = DEEP
    context_extra = _view(app)
    context_extra["context"]["extra"] = DEEP
    order = lumbar_mri()
    order["reasonCode"] = DEEP
    in_order = _select(app, orders=[order])
    return {
        "prefetch-value": (VIEW, with_prefetch_value),
        "prefetch-resource-field": (VIEW, in_resource),
        "prefetch-bundle-entry": (VIEW, in_bundle),
        "context-patientId": (VIEW, context_field),
        "context-unknown-field": (VIEW, context_extra),
        "context-whole": (VIEW, {**_view(app), "context": DEEP}),
        "draft-order-field": (SELECT, in_order),
        "feedback-list": (FEEDBACK, {"feedback": DEEP}),
        "feedback-item": (FEEDBACK, {"feedback": [DEEP]}),
        "feedback-override-reason": (FEEDBACK, {"feedback": [{"card": "c", "outcome": "overridden",
                                                              "outcomeTimestamp": "2026-01-01T00:00:00Z",
                                                              "overrideReason": DEEP}]}),
    }


@pytest.mark.parametrize("levels", [MAX_NESTING_DEPTH, 300, 1000, 1018])  # 1018 + placement ≤ 1024: orjson's limit
@pytest.mark.parametrize("kind", ["array", "object"])
def test_deep_nesting_anywhere_answers_400_json(app: Flask, kind: str, levels: int) -> None:
    for where, (path, body) in _placements(app).items():
        response = _post_raw(app, path, body, _nested(kind, levels))
        assert response.status_code == 400, (where, response.status_code, response.get_data()[:200])
        answer = response.get_json()
        assert answer["error"] == "too-deep", (where, answer)
        assert answer["field"].startswith("$."), (where, answer)


def test_the_deep_field_is_named(app: Flask) -> None:
    body = _view(app)
    body["prefetch"]["patient"] = DEEP
    answer = _post_raw(app, VIEW, body, _nested("array", 1000)).get_json()
    assert answer["field"].startswith("$.prefetch.patient"), answer
    assert str(MAX_NESTING_DEPTH) in answer["message"]


def test_nesting_below_the_limit_is_still_served(app: Flask) -> None:
    """Boundary: the same placement a few levels shallower is an ordinary request (200 or a schema 400)."""
    body = _view(app)
    body["context"]["extra"] = DEEP
    response = _post_raw(app, VIEW, body, _nested("array", MAX_NESTING_DEPTH - 10))
    assert response.status_code == 200, response.get_data()[:200]


def test_the_parsers_own_limit_is_a_400_too(app: Flask) -> None:
    """Beyond 1024 levels orjson refuses the body itself: still a 400 JSON, never a 500."""
    body = _view(app)
    body["context"]["extra"] = DEEP
    response = _post_raw(app, VIEW, body, _nested("array", 2000))
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed-json"


# ------------------------------------------------------------------ (7) ids with \Z semantics


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patientId", "p1\n"),
        ("userId", "Practitioner/dr-1\n"),
        ("encounterId", "enc-1\n"),
        ("patientId", "p1\r\n"),
    ],
)
def test_ids_with_a_trailing_newline_are_rejected(app: Flask, field: str, value: str) -> None:
    body = _view(app)
    body["context"][field] = value
    response = app.test_client().post(VIEW, json=body)
    assert response.status_code == 400
    assert response.get_json()["field"] == f"$.context.{field}"


def test_selection_and_order_id_with_a_trailing_newline_are_rejected(app: Flask) -> None:
    body = _select(app, selections=["ServiceRequest/order-1\n"])
    assert app.test_client().post(SELECT, json=body).get_json()["field"] == "$.context.selections[0]"
    body = _select(app, orders=[lumbar_mri(order_id="order-1\n")], selections=["ServiceRequest/order-1"])
    assert app.test_client().post(SELECT, json=body).status_code == 400


def test_the_same_ids_without_the_newline_are_accepted(app: Flask) -> None:
    body = _view(app)
    body["context"]["encounterId"] = "enc-1"
    assert app.test_client().post(VIEW, json=body).status_code == 200


def test_feedback_timestamp_with_a_trailing_newline_is_rejected(app: Flask) -> None:
    body = {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z\n"}]}
    response = app.test_client().post(FEEDBACK, json=body)
    assert response.status_code == 400
    assert response.get_json()["field"] == "$.feedback[0].outcomeTimestamp"


# ------------------------------------------------------------- (9) request ids that look like PHI


@pytest.mark.parametrize(
    "value",
    ["MRN-77881234", "77881234", "1980-01-01", "4111111111111111", "+44 20 7946 0958", "NHS9434765919",
     "patient-123456", "x" * 17, "a b", "", "ACC-12345678901234567890", "abc1234567890123456789",
     "ffff12345678901234567", "123-45-6789", "MRN\n77881234"],
)
def test_identifier_like_request_ids_are_replaced(value: str) -> None:
    assert not is_safe_request_id(value)
    assert request_id(value) != value and len(request_id(value)) == 32


@pytest.mark.parametrize(
    "value",
    ["0b7f6c1e-3a4d-4c6e-9a51-2f7a8b9c0d1e", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7",
     "req-42", "abc_DEF.1", "h4bf92f3577b34da6a3ce929d0e0e4736", "req_4bf92f3577b34da6a3ce929d0e0e4736"],
)
def test_random_looking_request_ids_are_kept(value: str) -> None:
    assert request_id(value) == value


def test_generated_hex_ids_are_almost_always_kept() -> None:
    """What nginx ($request_id), OpenTelemetry and uuid4().hex produce survives (1 in 1000 may not)."""
    import secrets

    kept = sum(is_safe_request_id(secrets.token_hex(16)) for _ in range(1000))
    assert kept >= 990


def test_an_mrn_request_id_never_reaches_the_log_or_the_response(make_app: Callable[..., Flask]) -> None:
    stream = io.StringIO()
    app = make_app()
    configure_logging("INFO", stream)
    try:
        response = app.test_client().get("/healthz", headers={"X-Request-ID": "MRN-77881234"})
        logging.getLogger("cds_service.test").info("direct", extra={"request_id": "MRN-77881234"})
    finally:
        configure_logging("WARNING")
    assert response.headers["X-Request-ID"] != "MRN-77881234"
    assert "77881234" not in stream.getvalue()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line.get("request_id") == response.headers["X-Request-ID"] for line in lines)


# ------------------------------------------------------------------ (10) capped array counts


def test_too_many_draft_orders_is_413_naming_the_limit(app: Flask) -> None:
    orders = [{"resourceType": "ServiceRequest", "id": f"o{i}"} for i in range(50_000)]  # 2.3 MB, under the cap
    body = _select(app, orders=orders, selections=["ServiceRequest/o1"])
    started = time.monotonic()
    response = app.test_client().post(SELECT, json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 413
    answer = response.get_json()
    assert answer["error"] == "too-many-items"
    assert answer["field"] == "$.context.draftOrders.entry"
    assert "200" in answer["message"] and "50000" in answer["message"]
    print(f"50 000 draft orders refused in {elapsed * 1000:.0f} ms")  # the bound is the behaviour, not the time


def test_too_many_selections_is_413(app: Flask) -> None:
    body = _select(app, selections=[f"ServiceRequest/o{i}" for i in range(100_000)])
    response = app.test_client().post(SELECT, json=body)
    assert response.status_code == 413
    assert response.get_json()["field"] == "$.context.selections"


def test_order_sign_draft_orders_are_capped_too(app: Flask) -> None:
    templates = app.extensions["cds"].services["lbp-imaging-order-sign"].prefetch
    body = hook_request("order-sign", prefetch=empty_prefetch(templates),
                        orders=[lumbar_mri(order_id=f"o{i}") for i in range(201)])
    response = app.test_client().post(SIGN, json=body)
    assert response.status_code == 413
    assert response.get_json()["field"] == "$.context.draftOrders.entry"


def test_exactly_the_limit_is_accepted(app: Flask) -> None:
    orders = [lumbar_mri(order_id=f"o{i}") for i in range(200)]
    body = _select(app, orders=orders, selections=[f"ServiceRequest/o{i}" for i in range(200)])
    assert app.test_client().post(SELECT, json=body).status_code == 200


def test_too_many_feedback_items_is_413(app: Flask) -> None:
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
    response = app.test_client().post(FEEDBACK, json={"feedback": [item] * 20_000})
    assert response.status_code == 413
    assert response.get_json()["field"] == "$.feedback"


# ----------------------------------------------------------- (11) operator endpoints need a token


OPS_TOKEN = "ops-token-for-tests-5f1c2e"


@pytest.mark.parametrize("path", ["/metrics", "/console/api/review", "/console/api/fixtures",
                                  "/console/api/analytics"])
def test_operator_endpoints_need_the_token(make_app: Callable[..., Flask], path: str) -> None:
    app = make_app(ops_token=OPS_TOKEN, console_enabled=True)
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": OPS_TOKEN},
                    {"Authorization": f"Basic {OPS_TOKEN}"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 401, (headers, response.status_code)
        assert response.get_json()["error"] == "unauthorized"
    response = client.get(path, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert response.status_code not in (401, 403), response.status_code


def test_console_api_path_spellings_do_not_bypass_the_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(ops_token=OPS_TOKEN, console_enabled=True).test_client()
    for path in ("//console/api/review", "/console//api/review", "/console/api/review/", "/console/./api/review"):
        response = client.get(path, follow_redirects=True)
        assert response.status_code in (401, 404), (path, response.status_code)


def test_production_without_a_token_closes_the_operator_endpoints(make_app: Callable[..., Flask]) -> None:
    app = make_app(environment="production", console_enabled=True)
    client = app.test_client()
    for path in ("/metrics", "/console/api/review"):
        response = client.get(path)
        assert response.status_code == 403
        assert "CDS_OPS_TOKEN" in response.get_json()["message"]
    assert client.get("/healthz").status_code == 200  # liveness stays open for the load balancer


def test_development_without_a_token_leaves_them_open(app: Flask) -> None:
    assert app.test_client().get("/metrics").status_code == 200


# -------------------------------------------------------------- (issue 17) aud 401 names the audience


def test_aud_failure_names_the_expected_audience(make_auth: AuthFactory, keys: dict[str, SigningKey]) -> None:
    error = fails(make_auth(), keys["ES384"].sign(claims_for(aud="http://127.0.0.1:8080/cds-services/x")), "aud")
    assert CALLED_URL in error.reason


def test_aud_failure_names_the_public_base_url_behind_a_proxy(
    make_auth: AuthFactory, keys: dict[str, SigningKey]
) -> None:
    authenticator = make_auth(public_base_url="https://cds.example.org/lbp")
    error = fails(authenticator, keys["ES384"].sign(claims_for()), "aud",
                  url="http://10.0.0.5:8080/cds-services/lbp-imaging")
    assert "https://cds.example.org/lbp/cds-services/lbp-imaging" in error.reason
