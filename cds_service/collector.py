"""Keeping Python's cyclic garbage collector out of the way of very large hook requests."""

from __future__ import annotations

import gc
import threading
import time

# Requests at least this large are handled with the cyclic garbage collector paused (see _CollectorPause).
LARGE_BODY_BYTES = 256 * 1024


class _CollectorPause:
    """Pause Python's cyclic garbage collector while large hook requests are handled (process-wide).

    Parsing a large prefetch creates millions of dicts, lists and strings, all alive until the request
    ends and none of them garbage. The collector nevertheless runs every 700 allocations, and its full
    collections traverse the growing tree again and again: at 50 000 resources that costs several
    times the parse itself (docs/benchmarks.md, W3). The pause ends when the last large request in the
    process ends; the request's objects are freed by reference counting either way. Cycles created by
    concurrent requests meanwhile (a few objects per request) wait for the next collection; should large
    requests overlap without a break for PAUSE_LIMIT_SECONDS, a young-generation collection runs anyway.
    """

    PAUSE_LIMIT_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False
        self._since = 0.0

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                self._since = time.monotonic()
                gc.disable()
            self._depth += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                if self._resume:
                    gc.enable()
            elif time.monotonic() - self._since > self.PAUSE_LIMIT_SECONDS:
                self._since = time.monotonic()
                gc.collect(0)


COLLECTOR_PAUSE = _CollectorPause()
