"""Where the repeated-body tail comes from: one body through the hook engine from N threads at once.

    python bench/tail_probe.py BODY.json SERVICE_ID [threads=4] [seconds=8] [gated]   -> JSON on stdout

``gated``: every call takes its turn at the compute gate (cds_service/compute_gate.py), as the server's
hook calls do; without it the threads share the interpreter lock as they come (CDS_GATE_WAIT_MS=0).

A gunicorn worker runs the app on a few threads in one interpreter (server.py: CDS_THREADS); this reproduces that
without HTTP, and times every request three ways: wall clock, this thread's CPU time, and the parts of
its wall time spent in garbage collections (gc.callbacks: every collection pauses every thread) and in
the served-cards write. Comparing the slowest 1 % with the median tells whether the tail is work (CPU
or a collection landing on the request) or waiting (the GIL handed to the other threads, the database
lock). Like bench/inproc.py it imports nothing from ``bench`` so PYTHONPATH decides the tree.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def main() -> int:
    body_path, service_id = Path(sys.argv[1]), sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 8.0
    gated = len(sys.argv) > 5 and sys.argv[5] == "gated"
    import orjson

    from cds_service.runtime import Runtime
    from cds_service.settings import Settings

    settings = Settings(environment="production", auth_mode="off", data_dir=Path(tempfile.mkdtemp()),
                        log_level="WARNING", auto_migrate=True)
    runtime = Runtime.build(settings)
    engine = runtime.engine
    raw = body_path.read_bytes()
    gc.collect()
    gc.freeze()  # as the server's post_worker_init does

    collections: list[tuple[float, float, int]] = []
    started_gc: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            started_gc["t"] = now
        elif "t" in started_gc:
            collections.append((started_gc.pop("t"), now, info.get("generation", -1)))

    writes = threading.local()
    store = runtime.store
    if store is not None:
        original = store.record_served

        def timed_write(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                writes.ms = (time.perf_counter() - t0) * 1000

        store.record_served = timed_write  # type: ignore[method-assign]

    samples: list[dict[str, float]] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    turn: Any = contextlib.nullcontext
    if gated:
        from cds_service.compute_gate import GATE

        turn = GATE.turn

    def worker() -> None:
        while time.perf_counter() < stop:
            writes.ms = 0.0
            c0, w0 = time.thread_time(), time.perf_counter()
            with turn():
                outcome = engine.invoke(service_id, orjson.loads(raw))
                orjson.dumps(outcome.body)
            w1, c1 = time.perf_counter(), time.thread_time()
            with lock:
                samples.append({"start": w0, "end": w1, "wall": (w1 - w0) * 1000, "cpu": (c1 - c0) * 1000,
                                "write": writes.ms})

    for _ in range(20):  # warm-up
        engine.invoke(service_id, orjson.loads(raw))
    gc.callbacks.append(on_gc)
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    gc.callbacks.remove(on_gc)

    for s in samples:  # collection time overlapping each request (a collection stops every thread)
        s["gc"] = sum(max(0.0, min(e, s["end"]) - max(b, s["start"])) for b, e, _ in collections) * 1000
        s["gc2"] = sum(max(0.0, min(e, s["end"]) - max(b, s["start"])) for b, e, g in collections if g == 2) * 1000
    walls = sorted(s["wall"] for s in samples)
    p50, p99 = walls[len(walls) // 2], walls[int(0.99 * (len(walls) - 1))]
    tail = [s for s in samples if s["wall"] >= p99]
    middle = [s for s in samples if abs(s["wall"] - p50) <= 0.1 * p50] or samples

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows), 3)

    print(json.dumps({
        "threads": threads, "gated": gated, "requests": len(samples), "seconds": seconds,
        "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "p99_over_p50": round(p99 / p50, 2),
        "cpu_p50_ms": round(statistics.median(s["cpu"] for s in samples), 3),
        "cpu_p99_ms": round(sorted(s["cpu"] for s in samples)[int(0.99 * (len(samples) - 1))], 3),
        "collections": {str(g): sum(1 for *_, x in collections if x == g) for g in (0, 1, 2)},
        "gen2_ms": [round((e - b) * 1000, 2) for b, e, g in collections if g == 2][:20],
        "median_requests": {k: mean(middle, k) for k in ("wall", "cpu", "gc", "gc2", "write")},
        "slowest_1pct": {k: mean(tail, k) for k in ("wall", "cpu", "gc", "gc2", "write")},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
