"""In-process measurement (W3): the service's whole request path vs parsing the same bytes.

Run as a script in a fresh interpreter so the code under test is whatever ``cds_service`` the
interpreter imports first (the runner points PYTHONPATH at the working tree, or at the baseline tree
for the "before" numbers). It imports nothing from ``bench`` for the same reason.

    python bench/inproc.py CASES.json          -> JSON results on stdout

CASES.json: {"data_dir": ..., "cases": [{"name", "service_id", "path", "expected", "budget_s"}]}

For each case, alternately and the same number of times, in the same process and heap state
(wall-clock and this thread's CPU time, which a busy machine disturbs less):
  * service  -- the hook engine (``HookEngine.invoke``): orjson parse, schema validation, prefetch
                resolution, facts, rules, card rendering, the served-cards insert, response
                serialisation (everything a hook request does; no HTTP server, no socket);
  * orjson   -- orjson.loads(body), the parser the service uses;
  * json     -- json.loads(body) (stdlib), for reference.
Medians are reported. GC stays in its default state throughout: the reference parse pays the same
collector the service pays.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def hook_caller(settings):  # noqa: ANN001, ANN201 - the tree under test decides the types
    """(service_id, raw body, case name) -> sorted card topics, through the hook engine.

    The engine is the whole request path minus the HTTP server: JSON parse, schema validation,
    prefetch resolution, facts, rules, card rendering, the served-card insert and the response
    serialisation. Trees from before the engine existed (the "before" ref) are driven through their
    app instead, so both sides of a comparison run everything a hook request runs.
    """
    import orjson

    try:
        from cds_service.runtime import Runtime

        engine = Runtime.build(settings).engine
    except (ImportError, AttributeError):
        from cds_service.app import create_app

        client = create_app(settings).test_client()

        def via_app(service_id: str, raw: bytes, name: str) -> list[str]:
            response = client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
            if response.status_code != 200:
                raise SystemExit(f"{name}: HTTP {response.status_code}: {response.data[:300]!r}")
            return sorted(c["source"]["topic"]["code"] for c in orjson.loads(response.data)["cards"])

        return via_app

    def via_engine(service_id: str, raw: bytes, name: str) -> list[str]:
        outcome = engine.invoke(service_id, orjson.loads(raw))
        if outcome.status != 200:
            raise SystemExit(f"{name}: status {outcome.status}: {outcome.body}")
        orjson.dumps(outcome.body)
        return sorted(d.topic for d in outcome.decisions)

    return via_engine


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    import orjson

    from cds_service.settings import Settings

    settings = Settings(
        environment="production",
        auth_mode="off",  # the floor endpoint is not authenticated either; see docs/benchmarks.md
        data_dir=Path(spec["data_dir"]),
        max_request_bytes=256 * 1024 * 1024,
        log_level="WARNING",  # one JSON line per request on stderr would be measured as well
        # the served-cards insert is part of the request path: create the schema as `migrate` would
        # (the field is absent from older trees measured as the baseline)
        **({"auto_migrate": True} if "auto_migrate" in Settings.__dataclass_fields__ else {}),
    )
    call = hook_caller(settings)
    results = []
    for case in spec["cases"]:
        raw = Path(case["path"]).read_bytes()

        def service(raw: bytes = raw, case: dict = case) -> list[str]:
            return call(case["service_id"], raw, case["name"])

        topics = service()  # warm-up (and correctness)
        wall: dict[str, list[float]] = {"service": [], "orjson": [], "json": []}
        cpu: dict[str, list[float]] = {"service": [], "orjson": [], "json": []}

        def timed(kind: str, fn, *args, wall=wall, cpu=cpu) -> None:  # noqa: ANN001
            c0, w0 = time.thread_time(), time.perf_counter()
            result = fn(*args)
            w1, c1 = time.perf_counter(), time.thread_time()
            wall[kind].append(w1 - w0)
            cpu[kind].append(c1 - c0)
            del result

        budget = float(case.get("budget_s", 6.0))
        started = time.perf_counter()
        reps = 0
        while reps < 3 or (time.perf_counter() - started < budget and reps < 400):
            timed("service", service)
            timed("orjson", orjson.loads, raw)
            if reps < 5 or len(raw) < 2_000_000:
                timed("json", json.loads, raw)
            reps += 1
        med = {k: statistics.median(v) * 1000 for k, v in wall.items()}
        med_cpu = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
        # the parse with the collector paused: what parsing costs when no collection lands in it
        gc.disable()
        try:
            nogc = []
            for _ in range(min(reps, 5)):
                t0 = time.perf_counter()
                parsed = orjson.loads(raw)
                nogc.append(time.perf_counter() - t0)
                del parsed
        finally:
            gc.enable()
        service_sorted = sorted(wall["service"])
        results.append(
            {
                "name": case["name"],
                "bytes": len(raw),
                "resources": case.get("resources"),
                "reps": reps,
                "service_ms": round(med["service"], 3),
                "service_p90_ms": round(service_sorted[int(0.9 * (len(service_sorted) - 1))] * 1000, 3),
                "service_cpu_ms": round(med_cpu["service"], 3),
                "orjson_ms": round(med["orjson"], 3),
                "orjson_cpu_ms": round(med_cpu["orjson"], 3),
                "orjson_nogc_ms": round(statistics.median(nogc) * 1000, 3),
                "json_ms": round(med["json"], 3),
                "ratio_orjson": round(med["service"] / med["orjson"], 2),
                "ratio_orjson_cpu": round(med_cpu["service"] / med_cpu["orjson"], 2),
                "ratio_json": round(med["service"] / med["json"], 2),
                "topics": topics,
                "expected": case.get("expected"),
                "topics_ok": topics == sorted(case.get("expected") or []),
            }
        )
        print(f"  in-process {case['name']}: service {med['service']:.2f} ms (cpu {med_cpu['service']:.2f}), "
              f"orjson {med['orjson']:.2f} ms ({reps} reps)", file=sys.stderr, flush=True)
    print(json.dumps({"results": results, "peak_rss_kib": _rss_peak_kib(), "pid": os.getpid(),
                      "cds_service": str(Path(sys.modules["cds_service"].__file__).parent)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
