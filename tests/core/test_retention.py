"""Issue 17 item 7: `cds-service purge` removes old rows and keeps the counts analytics need, on
SQLite and PostgreSQL, also when two purges run at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from cds_service import cli, retention
from cds_service.analytics import Period, build_report
from cds_service.store import ServedCard, Store
from cds_service.tables import metadata

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OS, PV = "lbp-imaging-order-select", "lbp-patient-view"
REASON = {"system": "http://example.org/fhir/lbp-cds/CodeSystem/override-reason", "code": "patient-specific",
          "display": "Patient-specific reason"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'retention.sqlite3'}"
    url = request.getfixturevalue("postgres_url")
    store = Store(url)
    store.create_schema()
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    store.engine.dispose()
    return url


def _card(uuid: str, topic: str, hook_instance: str, order: str | None = None, disposition: str = "shown",
          service: str = OS) -> ServedCard:
    return ServedCard(uuid, service, "order-select", hook_instance, topic, "warning", (f"{uuid}-s",),
                      order_reference=order, disposition=disposition)


def _seed(store: Store) -> None:
    store.create_schema()
    old = NOW - timedelta(days=500)
    recent = NOW - timedelta(days=10)
    # old: one order presented three times (one presentation), overridden then accepted → accepted
    store.record_served([_card("o1", "imaging-not-indicated", "hi-o", "ServiceRequest/1")], "p1", old)
    store.record_served([_card("o2", "imaging-not-indicated", "hi-o", "ServiceRequest/1")], "p1", old)
    store.record_served([_card("o3", "imaging-not-indicated", "hi-o", "ServiceRequest/1")], "p1", old)
    store.record_feedback(OS, [{"card": "o1", "outcome": "overridden", "outcomeTimestamp": "2025-01-01T00:00:00Z",
                                "overrideReason": {"reason": REASON}}], old + timedelta(minutes=1))
    store.record_feedback(OS, [{"card": "o3", "outcome": "accepted", "acceptedSuggestions": [{"id": "o3-s"}],
                                "outcomeTimestamp": "2025-01-01T00:00:00Z"}], old + timedelta(minutes=2))
    # old: overridden with a reason and a comment; a silent card; an unanswered card the next day
    store.record_served([_card("o4", "imaging-not-indicated", "hi-o4", "ServiceRequest/2")], "p2", old)
    store.record_feedback(OS, [{"card": "o4", "outcome": "overridden", "outcomeTimestamp": "2025-01-01T00:00:00Z",
                                "overrideReason": {"reason": REASON, "userComment": "free text"}}], old)
    store.record_served([_card("o5", "axspa-referral", "hi-o5", disposition="silent", service=PV)], "p3", old)
    store.record_served([_card("o6", "imaging-not-indicated", "hi-o6", "ServiceRequest/3")], "p3",
                        old + timedelta(days=1))
    # feedback for a card never served, long ago
    store.record_feedback(OS, [{"card": "ghost", "outcome": "accepted", "acceptedSuggestions": [{"id": "x"}],
                                "outcomeTimestamp": "2025-01-01T00:00:00Z"}], old)
    # recent: stays as rows
    store.record_served([_card("n1", "imaging-not-indicated", "hi-n", "ServiceRequest/9")], "p9", recent)
    store.record_feedback(OS, [{"card": "n1", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T00:00:00Z",
                                "overrideReason": {"reason": REASON, "userComment": "recent comment"}}], recent)


def _figures(report):
    return (
        sorted((t.service_id, t.topic, t.served, t.accepted, t.overridden, t.silent, t.served_rows,
                tuple((r.code, r.count) for r in t.reasons)) for t in report.topics),
        [(w.served, w.accepted, w.overridden, w.silent) for w in report.weeks],
    )


def _report(store: Store):
    period = Period(NOW.date() - timedelta(days=600), NOW.date())
    return build_report(store.engine, period)


def test_purge_keeps_the_aggregates(database_url: str) -> None:
    store = Store(database_url)
    _seed(store)
    before = _report(store)
    assert retention.stored_rows(store.engine)["served_cards"] == 7
    result = retention.purge(store.engine, 400, now=NOW)
    assert (result.served_rows, result.presentations) == (6, 4)
    assert result.feedback_rows == 4  # three answers of purged cards and the unknown card's
    rows = retention.stored_rows(store.engine)
    assert (rows["served_cards"], rows["feedback"]) == (1, 1)
    after = _report(store)
    assert _figures(after) == _figures(before)
    imaging = next(t for t in after.topics if t.topic == "imaging-not-indicated")
    assert (imaging.served, imaging.accepted, imaging.overridden, imaging.served_rows) == (4, 1, 2, 6)
    assert [c.comment for c in after.comments] == ["recent comment"]  # purged comments are gone
    assert retention.purge(store.engine, 400, now=NOW).served_rows == 0  # idempotent
    assert _figures(_report(store)) == _figures(before)
    store.engine.dispose()


def test_two_purges_at_once_count_every_row_once(database_url: str) -> None:
    store = Store(database_url)
    _seed(store)
    for i in range(300):  # enough rows for several small batches
        store.record_served([_card(f"b{i}", "self-management", f"hi-b{i}", service=PV)], "p",
                            NOW - timedelta(days=450, minutes=i))
    before = _figures(_report(store))
    errors: list[BaseException] = []

    def run() -> None:
        engine_store = Store(database_url)
        try:
            retention.purge(engine_store.engine, 400, now=NOW, batch=25)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine_store.engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert retention.stored_rows(store.engine)["served_cards"] == 1
    assert _figures(_report(store)) == before
    store.engine.dispose()


def test_purge_command(database_url: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(database_url)
    _seed(store)
    store.engine.dispose()
    monkeypatch.setenv("CDS_RETENTION_DAYS", "5")
    assert cli.main(["purge", "--database-url", database_url]) == 0
    assert "7 served cards" in capsys.readouterr().out  # everything is older than 5 days (the recent card: 10)
    assert cli.main(["purge", "--days", "0", "--database-url", database_url]) == 2


def test_purge_refuses_an_unmigrated_database(tmp_path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    assert cli.main(["purge", "--database-url", url]) == 1
    assert "cds-service migrate" in capsys.readouterr().err
