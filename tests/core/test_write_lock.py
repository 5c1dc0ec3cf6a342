"""The SQLite write lock (write_lock.py): exclusive across processes and threads, absent for PostgreSQL,
harmless where the lock file cannot be created; served cards are still written through it."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cds_service import write_lock
from cds_service.store import ServedCard, Store


def _hold_and_record(lock_path: str, log_path: str, rounds: int) -> None:
    lock = write_lock.FileWriteLock(Path(lock_path))
    for _ in range(rounds):
        with lock.hold():
            start = time.monotonic()
            time.sleep(0.002)
            with open(log_path, "a") as log:
                log.write(f"{start} {time.monotonic()}\n")


def _assert_no_overlap(log_path: Path, expected: int) -> None:
    spans = sorted(tuple(map(float, line.split())) for line in log_path.read_text().splitlines())
    assert len(spans) == expected
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two holders at once"


def test_exclusive_across_processes(tmp_path: Path):
    log = tmp_path / "spans"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hold_and_record, args=(str(tmp_path / "db.write-lock"), str(log), 15))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    _assert_no_overlap(log, 45)


def test_exclusive_across_threads_of_one_process(tmp_path: Path):
    log = tmp_path / "spans"
    lock = write_lock.FileWriteLock(tmp_path / "db.write-lock")

    def run() -> None:
        for _ in range(15):
            with lock.hold():
                start = time.monotonic()
                time.sleep(0.001)
                with open(log, "a") as out:
                    out.write(f"{start} {time.monotonic()}\n")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    _assert_no_overlap(log, 60)


def test_only_sqlite_files_get_a_lock(tmp_path: Path):
    assert write_lock.for_url("postgresql+psycopg://u@h/db") is None
    assert write_lock.for_url("sqlite://") is None
    assert write_lock.for_url("sqlite:///:memory:") is None
    assert write_lock.for_url("sqlite:///file:cds?mode=memory&uri=true") is None
    lock = write_lock.for_url(f"sqlite:///{tmp_path}/cds.sqlite3?timeout=5")
    assert lock is not None and lock.path == tmp_path / "cds.sqlite3.write-lock"


def test_an_unwritable_directory_leaves_writes_to_sqlite(tmp_path: Path, caplog):
    lock = write_lock.FileWriteLock(tmp_path / "missing-dir" / "db.write-lock")
    entered = []
    with lock.hold():
        entered.append(True)
    assert entered == [True]
    assert "write lock file unavailable" in caplog.text


def test_served_cards_are_written_through_the_lock(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path}/cds.sqlite3")
    assert store.create_schema()
    cards = [ServedCard(card_uuid=f"card-{n}", service_id="lbp-patient-view", hook="patient-view",
                        hook_instance=f"hi-{n}", topic="self-management", indicator="info", suggestion_uuids=())
             for n in range(3)]
    threads = [threading.Thread(target=store.record_served, args=([card], "p1", datetime.now(UTC)))
               for card in cards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (tmp_path / "cds.sqlite3.write-lock").exists()
    with store.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM served_cards")).scalar() == 3
    assert os.stat(tmp_path / "cds.sqlite3.write-lock").st_mode & 0o777 == 0o600
