"""The served-card writer (issue 16): rows written off the request path, in order, none lost on a clean
stop (close / interpreter exit), flush before feedback, inline writes when the queue is full or closed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from cds_service.served_writer import ServedWriter


class SlowTable:
    """A real SQLite table written one committed row at a time, optionally slowly."""

    def __init__(self, path: Path, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay
        self.threads: set[str] = set()
        self.batches: list[int] = []
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE rows (n INTEGER PRIMARY KEY)")

    def write(self, batch: list[int]) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(batch))
        time.sleep(self.delay)
        with sqlite3.connect(self.path) as conn:  # one transaction per batch
            conn.executemany("INSERT INTO rows VALUES (?)", [(n,) for n in batch])

    def rows(self) -> list[int]:
        with sqlite3.connect(self.path) as conn:
            return [r[0] for r in conn.execute("SELECT n FROM rows ORDER BY rowid")]


def test_rows_are_written_in_order_off_the_submitting_thread(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db", delay=0.002)
    writer = ServedWriter(table.write, name="served-writer-test")
    for n in range(50):
        writer.submit(n)
    assert writer.flush(10)
    assert table.rows() == list(range(50))
    assert table.threads == {"served-writer-test"}
    writer.close()


def test_what_queues_while_a_batch_is_written_goes_in_one_transaction(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db", delay=0.05)
    writer = ServedWriter(table.write)
    for n in range(30):
        writer.submit(n)
    assert writer.close(10)
    assert table.rows() == list(range(30))
    assert len(table.batches) < 30 and max(table.batches) > 1


def test_flush_waits_for_everything_submitted_before_it(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db", delay=0.01)
    writer = ServedWriter(table.write)
    for n in range(10):
        writer.submit(n)
    assert writer.pending > 0
    assert writer.flush(10)
    assert writer.pending == 0
    assert len(table.rows()) == 10
    writer.close()


def test_close_writes_everything_queued_and_later_submits_inline(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db", delay=0.005)
    writer = ServedWriter(table.write)
    for n in range(40):
        writer.submit(n)
    assert writer.close(10)
    assert table.rows() == list(range(40))
    writer.submit(99)  # after close: written by the caller, immediately
    assert table.rows()[-1] == 99


def test_many_threads_lose_nothing(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db")
    writer = ServedWriter(table.write)

    def submit(base: int) -> None:
        for n in range(100):
            writer.submit(base + n)

    workers = [threading.Thread(target=submit, args=(1000 * i,)) for i in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert writer.close(30)
    assert sorted(table.rows()) == sorted(1000 * i + n for i in range(8) for n in range(100))


def test_a_full_queue_writes_inline(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db", delay=0.05)
    writer = ServedWriter(table.write, max_queue=2)
    for n in range(6):
        writer.submit(n)
    # at most 2 queued (+1 being written): the rest went inline on this thread
    assert threading.current_thread().name in table.threads
    assert writer.close(10)
    assert sorted(table.rows()) == list(range(6))


def test_a_failing_write_does_not_stop_the_writer(tmp_path: Path) -> None:
    table = SlowTable(tmp_path / "t.db")

    def write(batch: list[int]) -> None:
        if 3 in batch:
            raise RuntimeError("boom")
        table.write(batch)

    writer = ServedWriter(write)
    for n in range(6):
        writer.submit(n)
        writer.flush(10)  # one item per batch
    assert writer.close(10)
    assert table.rows() == [0, 1, 2, 4, 5]


def test_interpreter_exit_writes_what_is_queued(tmp_path: Path) -> None:
    """A worker that ends normally (sys.exit, as gunicorn workers do) writes its queue first."""
    db = tmp_path / "exit.db"
    script = textwrap.dedent(f"""
        import sqlite3, sys, time
        from cds_service.served_writer import ServedWriter
        path = {str(db)!r}
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE rows (n INTEGER)")
        def write(batch):
            time.sleep(0.01)
            with sqlite3.connect(path) as conn:
                conn.executemany("INSERT INTO rows VALUES (?)", [(n,) for n in batch])
        writer = ServedWriter(write)
        for n in range(100):
            writer.submit(n)
        sys.exit(0)  # no close(): the atexit hook must do it
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM rows").fetchone()[0] == 100


def test_inline_mode_commits_the_row_before_the_answer_leaves(make_app) -> None:
    """The default: another instance (same database) can join feedback to the card at once."""
    import sqlalchemy as sa
    from hookreq import empty_prefetch, hook_request

    from cds_service.tables import served_cards

    app = make_app()
    assert app.extensions["cds"].settings.served_writes == "inline"
    templates = app.extensions["cds"].services["lbp-patient-view"].prefetch
    prefetch = empty_prefetch(templates)
    prefetch["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]},
        "onsetDateTime": "2026-11-20"}}]}
    cards = app.test_client().post("/cds-services/lbp-patient-view",
                                   json=hook_request("patient-view", prefetch=prefetch)).get_json()["cards"]
    assert cards, "a card to record"
    assert app.extensions["cds"].engine.served_writer.pending == 0  # nothing queued: written inline
    with app.extensions["cds"].store.engine.connect() as conn:
        stored = {r.card_uuid for r in conn.execute(sa.select(served_cards.c.card_uuid))}
    assert {c["uuid"] for c in cards} <= stored


def test_served_writes_setting_is_checked() -> None:
    import pytest

    from cds_service.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="CDS_SERVED_WRITES"):
        Settings.from_env({"CDS_SERVED_WRITES": "later"})
    assert Settings.from_env({"CDS_SERVED_WRITES": "background"}).served_writes == "background"
