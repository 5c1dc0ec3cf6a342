"""The served-card record off the request path: one writer thread per process.

A hook answer does not depend on its served-card row, yet writing it inline made every request wait
for the database: SQLite's single write lock (shared by every worker and thread, with a busy handler
that sleeps in growing steps while it waits) and the WAL checkpoints that land on whichever commit
crosses the threshold. Those waits were the repeated-body tail (docs/benchmarks.md, issue 16).

The request thread now hands its rows to :class:`ServedWriter` and answers; the writer thread writes
them in arrival order. Nothing acknowledged is lost on a clean stop: :meth:`ServedWriter.close` (run at
interpreter exit, which is how gunicorn workers end) writes everything queued before it returns, and
feedback calls :meth:`ServedWriter.flush` first, so a card is never "unknown" to the feedback that
answers it. The queue is bounded: when it is full (the database is slow or down) a request writes its
own rows inline again, as before, rather than holding more in memory. What a crash (SIGKILL, power)
loses is what was queued at that instant — at most the last few milliseconds of rows in normal running.
Rows hold card and hook ids and the patient id only until ``write`` hashes it (store.record_served).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cds_service.served_writer")

#: Rows waiting at most before a request writes its own inline (memory bound when the database stalls).
DEFAULT_MAX_QUEUE = 5_000
#: An idle writer thread ends after this long (a process that stops serving keeps no thread around).
IDLE_EXIT_SECONDS = 30.0


class ServedWriter:
    """Calls ``write(batch)`` with the submitted items, in order, on one background thread: a batch is
    everything queued since the thread last looked (one database transaction for many hook calls)."""

    def __init__(self, write: Callable[[list[Any]], None], *, max_queue: int = DEFAULT_MAX_QUEUE,
                 name: str = "served-writer") -> None:
        self._write = write
        self._max_queue = max_queue
        self._name = name
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._submitted = 0  # items ever queued
        self._done = 0  # items the thread has finished with (written, or failed and logged)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _live.add(self)

    @property
    def pending(self) -> int:
        with self._cond:
            return self._submitted - self._done

    def submit(self, item: Any) -> None:
        """Queue *item*; write it inline instead when closed or when the queue is full."""
        with self._cond:
            self._after_fork()
            inline = self._closed or len(self._items) >= self._max_queue
            if not inline:
                self._ensure_thread()
                self._items.append(item)
                self._submitted += 1
                self._cond.notify_all()
        if inline:
            self._write_batch([item])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every item submitted before this call is written; False on timeout."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Write everything queued, stop the thread; later submits are written inline. Idempotent."""
        with self._cond:
            self._after_fork()
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        # the thread may have been lost (fork) or timed out: whatever is left is written here
        while True:
            with self._cond:
                if not self._items:
                    break
                item = self._items.popleft()
            self._write_batch([item])
            with self._cond:
                self._done += 1
                self._cond.notify_all()
        with self._cond:
            return self._done >= self._submitted

    # ---- internals ----------------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child the queue belongs to the parent (which writes it) and the thread is gone."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._items.clear()
            self._submitted = self._done = 0
            self._thread = None

    def _ensure_thread(self) -> None:
        """Start the thread on first use (after the fork of a gunicorn worker, never before)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._closed, IDLE_EXIT_SECONDS)
                if not self._items:  # closed and drained, or idle: the next submit starts a new thread
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                batch = list(self._items)
                self._items.clear()
            self._write_batch(batch)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _write_batch(self, batch: list[Any]) -> None:
        try:
            self._write(batch)
        except Exception as exc:  # noqa: BLE001 - a failed write must not stop the writer
            # the exception type only: no row content in the log
            log.error("served-card write of %d hook calls failed: %s", len(batch), type(exc).__name__)


_live: weakref.WeakSet[ServedWriter] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Interpreter exit (a gunicorn worker's normal end, the CLI's end): write what is queued."""
    for writer in list(_live):
        writer.close()
