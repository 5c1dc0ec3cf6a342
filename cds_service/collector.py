"""How the service runs Python's cyclic garbage collector: always on, tuned once per worker.

Parsing a large prefetch creates millions of dicts, lists and strings that stay alive until the
request ends. With CPython's default thresholds (700, 10, 10) the collector's full collections
traverse that growing tree again and again (issue 15 item 12, measured below). The service used to
*disable* the collector process-wide while a large request ran, which also stopped it for every other
thread, and kept it off for as long as large requests overlapped. Now the collector is never paused:
its thresholds are raised once, at worker start (server.py, with ``gc.freeze()`` of the start-up
objects), which makes young collections rarer and full ones very rare, for every request alike.

Measured in process (CPU time of the request thread, 5 runs, median; bench/payloads W3 bodies):

=================  ==============  ==============  ==========================
body               paused (old)    default thr.    GC_THRESHOLDS (this)
=================  ==============  ==============  ==========================
4.3 MB (the cap)   87 ms           114 ms (GC 15)  118 ms (GC 18, no full)
17.2 MB            433 ms          801 ms (GC 353) 559 ms (GC 102, no full)
=================  ==============  ==============  ==========================

Cycles a request leaves (a few dozen objects) are still collected: young generation every 50 000
allocations, full collections after 100 middle-generation ones.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Set :data:`GC_THRESHOLDS` for this process (the collector stays enabled)."""
    gc.enable()
    gc.set_threshold(*GC_THRESHOLDS)

