"""A new SQLite database opened by several workers at once: the WAL switch waits for the others.

SQLite answers ``PRAGMA journal_mode=WAL`` with "database is locked" at once, without its busy
handler, while another connection holds a lock on the file. Before the retry in store._use_wal, a
worker that opened the new database while another was migrating it came up "unreachable"
(the cluster test of six workers starting on an empty database failed about one run in ten).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cds_service.store import Store


def _hold_exclusive_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    """A connection in the default (rollback journal) mode in a write transaction (a RESERVED lock)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_a_connection_opened_while_another_holds_the_lock_gets_wal_once_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "cds.db"
    locked = threading.Event()
    holder = threading.Thread(target=_hold_exclusive_lock, args=(path, 0.4, locked))
    holder.start()
    assert locked.wait(5)
    store = Store(f"sqlite:///{path}")
    try:
        started = time.monotonic()
        with store.engine.connect() as conn:
            mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar_one()
        waited = time.monotonic() - started
    finally:
        holder.join(5)
        store.engine.dispose()
    assert mode == "wal"
    assert waited >= 0.2  # it waited for the lock rather than failing at once


def test_an_already_wal_database_is_not_switched_again(tmp_path: Path) -> None:
    path = tmp_path / "cds.db"
    first = Store(f"sqlite:///{path}")
    with first.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    first.engine.dispose()
    statements: list[str] = []
    second = Store(f"sqlite:///{path}")

    def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    sa.event.listen(second.engine, "connect", trace, insert=True)
    with second.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
    second.engine.dispose()
    assert "PRAGMA journal_mode=WAL" not in statements
    assert "PRAGMA journal_mode" in statements


def test_an_unreachable_database_is_logged_with_the_error_type_only(tmp_path: Path, caplog) -> None:
    (tmp_path / "dir-not-file.db").mkdir()  # a directory where the file should be: cannot be opened
    store = Store(f"sqlite:///{tmp_path / 'dir-not-file.db'}")
    with caplog.at_level(logging.WARNING, logger="cds_service.store"):
        assert store.create_schema(wait=0) is False
        assert store.create_schema(wait=0) is False  # once per change of status, not per probe
    store.engine.dispose()
    assert store.schema_status == "unreachable"
    records = [r for r in caplog.records if r.getMessage() == "database unreachable"]
    assert len(records) == 1
    assert records[0].error_type == "OperationalError"
    assert str(tmp_path) not in records[0].getMessage()
