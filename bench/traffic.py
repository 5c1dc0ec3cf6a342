"""W5, W6 and the repeated body against one `cds-service serve` (bench/run.py calls :func:`traffic_suite`).

Every load is preceded by a check of every body (one request each, with a sample patient suffix):
HTTP 200 and, where the fixture declares them, the expected cards. The topics answered for every
body are kept, so the report can show that the "before" and "after" trees answer the same cards.
All loads at 8 connections, as many wrk threads as connections (one connection = one clinician's
EHR, sending its session in order), hook first, then the floor with the same bodies in the same order.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import requests

from bench import sessions as ss

CONNECTIONS = 8
SESSIONS_LUA = Path(__file__).resolve().parent / "lua" / "sessions.lua"

W5 = "W5 sandbox sessions"
W6 = "W6 every request a new patient"
REPEATED = "R one body repeated"


def _check(base: str, bodies: list[ss.Body]) -> dict[str, Any]:
    """Post each body once; compare with the fixture's expected cards where there is an expectation."""
    session = requests.Session()
    answers: dict[str, list[str]] = {}
    wrong: list[dict[str, Any]] = []
    statuses: dict[int, int] = {}
    for body in bodies:
        response = session.post(base + body.path, data=body.concrete(), timeout=60,
                                headers={"Content-Type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        topics = sorted(c["source"]["topic"]["code"] for c in response.json().get("cards", [])) \
            if response.status_code == 200 else [f"HTTP {response.status_code}"]
        answers[body.name] = topics
        if response.status_code != 200 or (body.expected is not None and topics != body.expected):
            wrong.append({"body": body.name, "got": topics, "expected": body.expected})
    return {"bodies": len(bodies), "statuses": {str(k): v for k, v in statuses.items()}, "wrong": wrong,
            "ok": not wrong, "answers": answers,
            "with_expectation": sum(1 for b in bodies if b.expected is not None)}


def traffic_suite(service: Any, workdir: Path, duration: float, warmup: float, run_wrk: Any, log: Any,
                  with_floor: bool = True) -> dict[str, Any]:
    """W5, W6 and the repeated body (hook, then floor) at 8 connections; returns rows and checks."""
    w5, w6, repeated = ss.w5_bodies(), ss.w6_bodies(), ss.repeated_body()
    bodies_dir = workdir / "traffic"
    lists = {
        W5: (ss.write_sequence(w5, bodies_dir, "w5"), ss.write_sequence(w5, bodies_dir, "w5", floor=True), "session"),
        W6: (ss.write_sequence(w6, bodies_dir, "w6"), ss.write_sequence(w6, bodies_dir, "w6", floor=True), "unique"),
    }
    repeated_file = bodies_dir / "repeated.json"
    repeated_file.write_bytes(repeated.raw)
    checks = {W5: _check(service.base, w5), W6: _check(service.base, w6), REPEATED: _check(service.base, [repeated])}
    for name, check in checks.items():
        log(f"{service.label} {name}: check {check['bodies']} bodies, statuses {check['statuses']}, "
            f"wrong {len(check['wrong'])}")
    rows: list[dict[str, Any]] = []

    def load(name: str, kind: str, url: str, **kwargs: Any) -> None:
        if warmup > 0:
            run_wrk(url, None if "script" in kwargs else repeated_file, CONNECTIONS, warmup, **_fresh(kwargs))
        workers = service.workers()
        cpu_before = worker_cpu_seconds(workers)
        result = run_wrk(url, None if "script" in kwargs else repeated_file, CONNECTIONS, duration, **_fresh(kwargs))
        cpu = worker_cpu_seconds(workers) - cpu_before
        result.update({"workload": name, "kind": kind, "tree": service.label,
                       # the workers' CPU (user + system) per answered request: robust where wall-clock
                       # throughput swings with whatever else the machine runs
                       "server_cpu_ms": round(1000 * cpu / result["requests"], 3) if result["requests"] else None})
        if kind == "service":
            result["check"] = {k: v for k, v in checks[name].items() if k != "answers"}
        rows.append(result)
        log(f"{service.label} {name} {kind} c={CONNECTIONS}: {result['throughput']} req/s, "
            f"p50 {result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms, errors {result['errors']}")

    for name, (hook_list, floor_list, mode) in lists.items():
        for kind, listing in (("service", hook_list), ("floor", floor_list))[: 2 if with_floor else 1]:
            env = {"BENCH_LIST": str(listing), "BENCH_MODE": mode, "BENCH_SESSION_LEN": str(ss.SESSION_LENGTH),
                   "BENCH_THREADS": str(CONNECTIONS)}
            load(name, kind, service.base + "/", script=SESSIONS_LUA, threads=CONNECTIONS, env_extra=env)
    load(REPEATED, "service", service.base + repeated.path)
    if with_floor:
        load(REPEATED, "floor", service.base + "/_bench/floor")
    return {
        "rows": rows,
        "answers": {name: check["answers"] for name, check in checks.items()},
        "bodies": {W5: len(w5), W6: len(w6), REPEATED: 1},
        "sessions": len(w5) // ss.SESSION_LENGTH,
        "bytes": {W5: sum(len(b.raw) for b in w5) // max(1, len(w5)),
                  W6: sum(len(b.raw) for b in w6) // max(1, len(w6)), REPEATED: len(repeated.raw)},
    }


def worker_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes (the server's workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / ticks


def _fresh(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A new nonce per wrk run: no two runs (warm-up included) send the same patient."""
    if "env_extra" not in kwargs:
        return kwargs
    return {**kwargs, "env_extra": {**kwargs["env_extra"], "BENCH_NONCE": secrets.token_hex(2)}}
