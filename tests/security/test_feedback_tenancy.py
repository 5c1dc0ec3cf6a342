"""Issue 15 item 4: feedback is bound to the client (issuer, tenant) its card was served to, and the
latest answer is the one the server received last. Through the whole app with JWT authentication on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from hookreq import empty_prefetch, hook_request

from cds_service.analytics import Period, build_report
from cds_service.store import ServedCard
from cds_service.tables import feedback, served_cards

# the app-with-JWT fixtures of test_app_auth (imported to register them here)
from .test_app_auth import ISS_A, ISS_B, AuthAppFactory, _servers, auth_app, recorders  # noqa: F401

OS = "lbp-imaging-order-select"
OS_PATH = f"/cds-services/{OS}"
OS_FEEDBACK = f"{OS_PATH}/feedback"


def _rows(app, table):
    app.extensions["cds"].engine.served_writer.flush()  # served-card rows are written off the request path
    with app.extensions["cds"].store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def _serve_for(app, issuer: str) -> ServedCard:
    card = ServedCard(str(uuid.uuid4()), OS, "order-select", str(uuid.uuid4()), "imaging-not-indicated", "warning",
                      ("s-1",))
    app.extensions["cds"].store.record_served([card], "p1", datetime.now(UTC), issuer=issuer)
    return card


def _answer(card: str, outcome: str, stamp: str = "2026-01-01T10:00:00Z") -> dict:
    item = {"card": card, "outcome": outcome, "outcomeTimestamp": stamp}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": "s-1"}]
    return {"feedback": [item]}


def test_served_cards_record_the_issuer_they_were_served_to(auth_app: AuthAppFactory) -> None:  # noqa: F811
    service = auth_app()
    templates = service.app.extensions["cds"].services[OS].prefetch
    body = hook_request("order-select", prefetch=empty_prefetch(templates))
    response = service.call("POST", OS_PATH, service.token(OS_PATH), body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    assert cards, "a lumbar MRI without red flags gets the imaging card"
    stored = {r["card_uuid"]: r for r in _rows(service.app, served_cards)}
    assert {stored[c["uuid"]]["issuer"] for c in cards} == {ISS_A}


def test_feedback_from_another_issuer_is_flagged_and_told_unknown(auth_app: AuthAppFactory) -> None:  # noqa: F811
    service = auth_app()
    card = _serve_for(service.app, ISS_A)
    forged = service.call("POST", OS_FEEDBACK, service.token(OS_FEEDBACK, iss=ISS_B),
                          _answer(card.card_uuid, "overridden", "2099-01-01T00:00:00Z"))
    assert forged.status_code == 200
    # the other tenant learns nothing about A's card
    assert forged.get_json()["feedback"] == [{"card": card.card_uuid, "knownCard": False, "flag": "unknown-card"}]
    own = service.call("POST", OS_FEEDBACK, service.token(OS_FEEDBACK), _answer(card.card_uuid, "accepted"))
    assert own.status_code == 200, own.get_json()
    assert own.get_json()["feedback"] == [{"card": card.card_uuid, "knownCard": True}]
    by_issuer = {r["issuer"]: r for r in _rows(service.app, feedback)}
    assert by_issuer[ISS_B]["flag"] == "issuer-mismatch" and by_issuer[ISS_A]["flag"] is None
    today = datetime.now(UTC).date().isoformat()
    report = build_report(service.app.extensions["cds"].store.engine, Period.parse(today, today))
    [topic] = report.topics
    assert (topic.served, topic.accepted, topic.overridden) == (1, 1, 0)


def test_a_future_outcome_timestamp_does_not_outrank_a_later_answer(auth_app: AuthAppFactory) -> None:  # noqa: F811
    service = auth_app()
    card = _serve_for(service.app, ISS_A)
    first = service.call("POST", OS_FEEDBACK, service.token(OS_FEEDBACK),
                         _answer(card.card_uuid, "overridden", "2099-01-01T00:00:00Z"))
    assert first.status_code == 200
    later = service.call("POST", OS_FEEDBACK, service.token(OS_FEEDBACK),
                         _answer(card.card_uuid, "accepted", "2026-01-01T10:00:00Z"))
    assert later.status_code == 200
    stored = sorted(_rows(service.app, feedback), key=lambda r: r["id"])
    assert [r["outcome_timestamp"].year for r in stored] == [2099, 2026]  # the client's time is kept as data
    today = datetime.now(UTC).date().isoformat()
    [topic] = build_report(service.app.extensions["cds"].store.engine, Period.parse(today, today)).topics
    assert (topic.accepted, topic.overridden) == (1, 0)  # received last wins, whatever it claims
