"""Feedback endpoint and store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from cds_service.store import ServedCard, Store, feedback, served_cards


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_app(request, make_app, tmp_path):
    if request.param == "sqlite":
        return make_app()
    app = make_app(database_url=request.getfixturevalue("postgres_url"))
    with app.extensions["cds"].store.engine.begin() as conn:  # one database per session: start empty
        conn.execute(feedback.delete())
        conn.execute(served_cards.delete())
    return app


def serve_card(app, service_id="lbp-imaging-order-select", topic="imaging-not-indicated") -> ServedCard:
    card = ServedCard(
        card_uuid=str(uuid.uuid4()), service_id=service_id, hook="order-select", hook_instance=str(uuid.uuid4()),
        topic=topic, indicator="warning", suggestion_uuids=(str(uuid.uuid4()), str(uuid.uuid4())),
    )
    app.extensions["cds"].store.record_served([card], "patient-123", datetime.now(UTC))
    return card


def rows(app, table):
    app.extensions["cds"].engine.served_writer.flush()  # served-card rows are written off the request path
    with app.extensions["cds"].store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def test_accepted_and_overridden_feedback_join_their_cards(backend_app):
    card = serve_card(backend_app)
    other = serve_card(backend_app)
    body = {"feedback": [
        {"card": card.card_uuid, "outcome": "accepted", "acceptedSuggestions": [{"id": card.suggestion_uuids[0]}],
         "outcomeTimestamp": "2026-11-21T10:00:00Z"},
        {"card": other.card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:01:00+01:00",
         "overrideReason": {"reason": {"system": "http://example.org/fhir/lbp-cds/CodeSystem/override-reason",
                                       "code": "patient-specific", "display": "Patient-specific reason"},
                            "userComment": "Discussed with patient"}},
    ]}
    response = backend_app.test_client().post("/cds-services/lbp-imaging-order-select/feedback", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["feedback"] == [{"card": card.card_uuid, "knownCard": True},
                                               {"card": other.card_uuid, "knownCard": True}]
    stored = {r["card_uuid"]: r for r in rows(backend_app, feedback)}
    assert stored[card.card_uuid]["outcome"] == "accepted"
    assert json.loads(stored[card.card_uuid]["accepted_suggestions"]) == [card.suggestion_uuids[0]]
    assert stored[other.card_uuid]["override_code"] == "patient-specific"
    assert stored[other.card_uuid]["user_comment"] == "Discussed with patient"
    assert all(r["flag"] is None for r in stored.values())


def test_feedback_for_unknown_card_is_stored_and_flagged(backend_app):
    unknown = str(uuid.uuid4())
    body = {"feedback": [{"card": unknown, "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z"}]}
    response = backend_app.test_client().post("/cds-services/lbp-patient-view/feedback", json=body)
    assert response.status_code == 200
    assert response.get_json()["feedback"] == [{"card": unknown, "knownCard": False, "flag": "unknown-card"}]
    [row] = rows(backend_app, feedback)
    assert row["known_card"] is False and row["flag"] == "unknown-card"


def test_feedback_to_the_wrong_service_or_suggestion_is_flagged(backend_app):
    card = serve_card(backend_app)
    client = backend_app.test_client()
    wrong_service = {"feedback": [{"card": card.card_uuid, "outcome": "overridden",
                                   "outcomeTimestamp": "2026-11-21T10:00:00Z"}]}
    assert client.post("/cds-services/lbp-patient-view/feedback", json=wrong_service).get_json()["feedback"][0][
        "flag"] == "service-mismatch"
    wrong_suggestion = {"feedback": [{"card": card.card_uuid, "outcome": "accepted",
                                      "acceptedSuggestions": [{"id": "made-up"}],
                                      "outcomeTimestamp": "2026-11-21T10:00:00Z"}]}
    assert client.post("/cds-services/lbp-imaging-order-select/feedback", json=wrong_suggestion).get_json()[
        "feedback"][0]["flag"] == "unknown-suggestion"


def test_served_cards_store_no_patient_identifier(backend_app):
    serve_card(backend_app)
    [row] = rows(backend_app, served_cards)
    assert "patient-123" not in json.dumps(row, default=str)
    assert row["patient_hash"] is None  # no key configured → nothing about the patient at all


def test_patient_hash_is_keyed(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'h.sqlite3'}", patient_hash_key="site-secret")
    other = Store(f"sqlite:///{tmp_path / 'h2.sqlite3'}", patient_hash_key="other-secret")
    assert store.patient_hash("p1") != other.patient_hash("p1")
    assert store.patient_hash("p1") == store.patient_hash("p1") and "p1" not in store.patient_hash("p1")


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-21T10:00:00Z"},
         "$.feedback[0].acceptedSuggestions"),
        ({"card": "x", "outcome": "ignored", "outcomeTimestamp": "2026-11-21T10:00:00Z"}, "$.feedback[0].outcome"),
        ({"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}, "$.feedback[0].outcomeTimestamp"),
        ({"outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z"}, "$.feedback[0].card"),
    ],
)
def test_invalid_feedback_is_400_naming_the_field(client, item, field):
    response = client.post("/cds-services/lbp-patient-view/feedback", json={"feedback": [item]})
    assert response.status_code == 400
    assert response.get_json()["field"] == field


def test_feedback_when_database_is_down_is_503_not_a_false_success(make_app):
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    body = {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z"}]}
    response = app.test_client().post("/cds-services/lbp-patient-view/feedback", json=body)
    assert response.status_code == 503
    assert response.headers["Retry-After"]


# ---- issue 15 item 4: feedback bound to the client the card was served to -----------------------

def _feedback_item(card: ServedCard, outcome: str = "overridden") -> dict:
    item = {"card": card.card_uuid, "outcome": outcome, "outcomeTimestamp": "2026-11-21T10:00:00Z"}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card.suggestion_uuids[0]}]
    return item


def test_feedback_from_another_tenant_of_the_same_issuer_is_flagged(backend_app):
    store = backend_app.extensions["cds"].store
    card = ServedCard(str(uuid.uuid4()), "lbp-patient-view", "patient-view", "hi", "axspa-referral", "info",
                      (str(uuid.uuid4()),))
    store.record_served([card], "p1", datetime.now(UTC), issuer="https://ehr.example", tenant="north")
    now = datetime.now(UTC)
    other = store.record_feedback("lbp-patient-view", [_feedback_item(card)], now, issuer="https://ehr.example",
                                  tenant="south")
    assert other == [{"card": card.card_uuid, "knownCard": False, "flag": "unknown-card"}]
    anonymous = store.record_feedback("lbp-patient-view", [_feedback_item(card)], now)
    assert anonymous[0]["flag"] == "unknown-card"  # no authentication is another client too
    own = store.record_feedback("lbp-patient-view", [_feedback_item(card, "accepted")], now,
                                issuer="https://ehr.example", tenant="north")
    assert own == [{"card": card.card_uuid, "knownCard": True}]
    flags = [r["flag"] for r in sorted(rows(backend_app, feedback), key=lambda r: r["id"])]
    assert flags == ["issuer-mismatch", "issuer-mismatch", None]
    stored = {r["tenant"] for r in rows(backend_app, feedback)}
    assert stored == {"north", "south", None}
