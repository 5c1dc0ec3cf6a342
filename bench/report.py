"""docs/benchmarks.md and the charts from docs/benchmarks.json (bench/run.py calls write_report).

    .venv/bin/python -m bench.report [docs/]     re-renders the report from the JSON alone
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.charts import Chart, Series, render
from bench.report_traffic import traffic_errors, traffic_section, traffic_targets

NOTES = Path(__file__).resolve().parent / "NOTES.md"
LATENCY_SVG = "benchmarks-latency-vs-size.svg"
THROUGHPUT_SVG = "benchmarks-throughput-vs-concurrency.svg"


def _row(rows: list[dict[str, Any]], workload_prefix: str, kind: str, conc: int) -> dict[str, Any] | None:
    for row in rows or []:
        if row["workload"].startswith(workload_prefix) and row["kind"] == kind and row["connections"] == conc:
            return row
    return None


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x): 1.0 is linear growth."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rows = data.get("throughput") or []
    for wl in ("W1", "W2"):
        svc, floor = _row(rows, wl, "service", 8), _row(rows, wl, "floor", 8)
        if svc and floor:
            ratio = svc["throughput"] / floor["throughput"]
            out.append({
                "target": f"{wl} throughput >= 0.5 x floor at concurrency 8",
                "measured": f"{svc['throughput']:,.0f} / {floor['throughput']:,.0f} req/s = {ratio:.2f} x floor",
                "ok": ratio >= 0.5,
                "gap": None if ratio >= 0.5 else f"{ratio / 0.5:.0%} of the target; needs {0.5 / ratio:.1f}x the "
                                                 f"throughput ({0.5 * floor['throughput']:,.0f} req/s)",
            })
    for wl in ("W1", "W2"):
        for conc in (8, 1, 32):
            svc = _row(rows, wl, "service", conc)
            if svc and svc["p50_ms"] > 0:
                ratio = svc["p99_ms"] / svc["p50_ms"]
                out.append({
                    "target": f"{wl} p99 <= 3 x p50 at concurrency {conc}" + ("" if conc == 8 else " (also shown)"),
                    "measured": f"p99 {svc['p99_ms']:.2f} ms / p50 {svc['p50_ms']:.2f} ms = {ratio:.2f}",
                    "ok": ratio <= 3,
                    "gap": None if ratio <= 3 else f"p99 is {ratio:.1f} x p50 ({ratio / 3:.1f}x over)",
                })
    inproc = (data.get("w3_inprocess") or {}).get("results") or []
    for r in inproc:
        if r["name"].startswith("W3") and (r.get("resources") or 0) >= 10000:
            strict = r["service_ms"] / r["orjson_nogc_ms"] if r.get("orjson_nogc_ms") else None
            out.append({
                "target": f"W3 evaluation <= 5 x JSON parse at {r['resources']:,} resources",
                "measured": f"{r['service_ms']:.0f} ms vs orjson {r['orjson_ms']:.0f} ms = {r['ratio_orjson']:.2f} x "
                            f"(vs the parse with the collector paused, {r['orjson_nogc_ms']:.0f} ms: {strict:.2f} x; "
                            f"vs json.loads {r['json_ms']:.0f} ms: {r['ratio_json']:.2f} x)",
                "ok": r["ratio_orjson"] <= 5,
                "gap": None if r["ratio_orjson"] <= 5 else f"{r['ratio_orjson'] / 5:.1f}x over",
            })
    w4 = data.get("w4") or {}
    if w4.get("five_missing"):
        ratio = w4["five_missing"]["p50_ms"] / w4["one_call_ms"]
        out.append({
            "target": "W4 total <= 1.5 x one FHIR call (5 missing prefetch keys)",
            "measured": f"p50 {w4['five_missing']['p50_ms']:.1f} ms / one call {w4['one_call_ms']:.1f} ms "
                        f"= {ratio:.2f} x",
            "ok": ratio <= 1.5,
            "gap": None if ratio <= 1.5 else f"{ratio / 1.5:.2f}x over",
        })
    out += traffic_targets(data)
    errors, checks = error_count(data)
    out.append({
        "target": "no errors under any workload",
        "measured": f"{errors} errors; {checks} wrong answers (cards not the fixture's expected cards)",
        "ok": errors == 0 and checks == 0,
        "gap": None if errors == 0 and checks == 0 else "see the tables",
    })
    slope = linearity(data)
    if slope is not None:
        out.append({
            "target": "W3 growth is linear (log-log slope of evaluation time, 1 000 -> largest size)",
            "measured": f"slope {slope:.2f} (1.00 = linear)",
            "ok": slope <= 1.15,
            "gap": None if slope <= 1.15 else "super-linear",
        })
    return out


def error_count(data: dict[str, Any]) -> tuple[int, int]:
    errors = sum(r.get("errors", 0) for r in data.get("throughput") or [])
    errors += sum(r.get("errors", 0) for r in data.get("w3_end_to_end") or [])
    wrong = sum(1 for r in data.get("throughput") or [] if r.get("check") and not r["check"]["ok"])
    wrong += sum(1 for r in data.get("w3_end_to_end") or [] if not r.get("topics_ok", True))
    wrong += sum(1 for r in (data.get("w3_inprocess") or {}).get("results") or [] if not r.get("topics_ok", True))
    for key in ("five_missing", "all_missing"):
        item = (data.get("w4") or {}).get(key)
        if item:
            errors += item["errors"]
            wrong += 0 if item["topics_ok"] else 1
    more_errors, more_wrong = traffic_errors(data)
    return errors + more_errors, wrong + more_wrong


def linearity(data: dict[str, Any]) -> float | None:
    inproc = (data.get("w3_inprocess") or {}).get("results") or []
    pts = [(r["resources"], r["service_ms"]) for r in inproc if r["name"].startswith("W3") and r["resources"] >= 1000]
    return _slope(pts)


def charts(data: dict[str, Any], out: Path) -> None:
    def series(results: list[dict[str, Any]] | None, key: str) -> list[tuple[float, float]]:
        return [(r["resources"], r[key]) for r in results or [] if r["name"].startswith("W3")]

    after = (data.get("w3_inprocess") or {}).get("results")
    before = (data.get("w3_inprocess_before") or {}).get("results")
    e2e = [(r["resources"], r["p50_ms"]) for r in data.get("w3_end_to_end") or []]
    chart = Chart(
        title="W3: latency per request vs prefetch size (median)",
        x_label="FHIR resources in the prefetch", y_label="milliseconds (log)",
        series=[
            Series("service, end to end (HTTP)", e2e, color="#2ca02c"),
            Series("service, in process (after)", series(after, "service_ms"), color="#1f77b4"),
            Series("service, in process (before)", series(before, "service_ms"), dashed=True, color="#d62728"),
            Series("orjson.loads, same bytes", series(after, "orjson_ms"), color="#ff7f0e"),
            Series("orjson.loads, GC paused", series(after, "orjson_nogc_ms"), dashed=True, color="#ff7f0e"),
            Series("json.loads, same bytes", series(after, "json_ms"), dashed=True, color="#7f7f7f"),
        ],
    )
    (out / LATENCY_SVG).write_text(render(chart))
    rows = data.get("throughput") or []
    conc = sorted({r["connections"] for r in rows})
    lines = []
    for wl, color in (("W1", "#1f77b4"), ("W2", "#2ca02c")):
        lines.append(Series(f"{wl} service", [(c, r["throughput"]) for c in conc
                                               if (r := _row(rows, wl, "service", c))], color=color))
        lines.append(Series(f"floor ({wl} body)", [(c, r["throughput"]) for c in conc
                                                    if (r := _row(rows, wl, "floor", c))], dashed=True, color=color))
        before = _row(data.get("throughput_before") or [], wl, "service", 8)
        if before:
            lines.append(Series(f"{wl} before (c=8)", [(8, before["throughput"])], color="#d62728" if wl == "W1"
                                else "#ff7f0e"))
    chart = Chart(title="W1 / W2: throughput vs concurrency (wrk, keep-alive)", x_label="concurrent connections",
                  y_label="requests per second (log)", series=lines, x_ticks=[1, 8, 32])
    (out / THROUGHPUT_SVG).write_text(render(chart))


def _throughput_table(data: dict[str, Any]) -> list[str]:
    rows = data.get("throughput") or []
    lines = ["| workload | concurrency | endpoint | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | errors | x floor |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for wl in ("W1", "W2"):
        for c in sorted({r["connections"] for r in rows}):
            for kind in ("service", "floor"):
                r = _row(rows, wl, kind, c)
                if not r:
                    continue
                floor = _row(rows, wl, "floor", c)
                ratio = f"{r['throughput'] / floor['throughput']:.2f}" if kind == "service" and floor else ""
                name = r["workload"] if kind == "service" else f"floor ({wl} body)"
                lines.append(
                    f"| {name} | {c} | {'hook' if kind == 'service' else '/_bench/floor'} | {r['throughput']:,.0f} | "
                    f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99_ms'] / r['p50_ms']:.1f} | "
                    f"{r['errors']} | {ratio} |")
    return lines


def write_report(data: dict[str, Any], out: Path) -> None:
    charts(data, out)
    m = data.get("machine", {})
    v = data.get("versions", {})
    s = data.get("settings", {})
    busy = (m.get("loadavg_start") or [0])[0]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (bench/run.py) — do not edit by hand; the analysis comes from "
        "[bench/NOTES.md](../bench/NOTES.md). Raw numbers: [benchmarks.json](benchmarks.json); profiles: "
        "[benchmarks-profile.txt](benchmarks-profile.txt).",
        "",
        f"- Run: {data.get('generated')} , {data.get('elapsed_s')} s in all.",
        f"- Machine: **{m.get('cores')} cores** ({m.get('cores_usable')} usable), {m.get('cpu_model')}, "
        f"{m.get('memory_gib')} GiB, {m.get('os')}.",
        f"- Load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}"
        + (" — **the machine was busy with other work: numbers are noisy**." if busy > 0.5 * (m.get("cores") or 1)
           else "."),
        f"- Server: {s.get('server')}. Every wrk run {s.get('duration_s')} s after a {s.get('warmup_s')} s warm-up.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "## Targets",
        "",
        "| target | measured | verdict | by how much |",
        "|---|---|---|---|",
    ]
    for t in targets(data):
        lines.append(f"| {t['target']} | {t['measured']} | {_verdict(t['ok'])} | {t['gap'] or ''} |")
    lines += ["", "## W1, W2 and the floor (wrk, `cds-service serve`)", ""]
    lines += _throughput_table(data)
    checks = {r["workload"]: r["check"] for r in data.get("throughput") or [] if r.get("check")}
    lines += [""] + [f"- {name}: answer checked before the load: HTTP {c['status']}, cards {c['topics']} "
                     f"(expected {c['expected']})." for name, c in checks.items()]
    whatif = data.get("throughput_whatif_tmpfs_db") or []
    if whatif:
        lines += ["", "What-if (not production settings): the same server with its SQLite database on tmpfs, where "
                      "a commit costs no fsync — the share of the served-cards insert:", "",
                  "| workload, c=8 | req/s (database on disk) | req/s (database on tmpfs) | p50 ms disk / tmpfs "
                  "| p99 ms disk / tmpfs |", "|---|---:|---:|---:|---:|"]
        for wl in ("W1", "W2"):
            a, b = _row(data.get("throughput") or [], wl, "service", 8), _row(whatif, wl, "service", 8)
            if a and b:
                lines.append(f"| {a['workload']} | {a['throughput']:,.0f} | {b['throughput']:,.0f} | "
                             f"{a['p50_ms']:.1f} / {b['p50_ms']:.1f} | {a['p99_ms']:.1f} / {b['p99_ms']:.1f} |")
    payloads = data.get("payloads", {})
    lines += ["", "Payloads: " + "; ".join(f"{k}: {p['resources']} resources, {p['bytes']:,} bytes"
                                           for k, p in payloads.items() if not k.startswith("W3")) + "."]

    lines += traffic_section(data)
    lines += ["", "## W3: prefetch size scaling", "",
              "In process: the whole request path through Flask's test client (parse, validation, prefetch, facts, "
              "rules, cards, the served-cards insert) against `orjson.loads` / `json.loads` of the same bytes, "
              "alternating in one process (medians). End to end: one keep-alive client posting to "
              "`cds-service serve` (median).", "",
              "| resources | bytes | service in process ms | (CPU ms) | orjson ms | (CPU ms) | orjson, GC paused ms "
              "| json.loads ms | service / orjson | (CPU) | service / orjson GC paused | µs per resource "
              "| end to end ms |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    e2e = {r["resources"]: r for r in data.get("w3_end_to_end") or []}
    for r in (data.get("w3_inprocess") or {}).get("results") or []:
        if not r["name"].startswith("W3"):
            continue
        e = e2e.get(r["resources"])
        lines.append(
            f"| {r['resources']:,} | {r['bytes']:,} | {r['service_ms']:.2f} | {_f(r.get('service_cpu_ms'), 2)} | "
            f"{r['orjson_ms']:.2f} | {_f(r.get('orjson_cpu_ms'), 2)} | {r['orjson_nogc_ms']:.2f} | "
            f"{r['json_ms']:.2f} | {r['ratio_orjson']:.2f} | {_f(r.get('ratio_orjson_cpu'), 2)} | "
            f"{r['service_ms'] / r['orjson_nogc_ms']:.2f} | {r['service_ms'] * 1000 / r['resources']:.1f} | "
            f"{_f(e['p50_ms'], 1) if e else '–'} |")
    lines += ["", "W1 and W2 in process (the fixed cost of a typical request, no HTTP server): "
              + "; ".join(f"{r['name']} {r['service_ms']:.2f} ms ({_f(r.get('service_cpu_ms'), 2)} ms CPU)"
                          for r in (data.get("w3_inprocess") or {}).get("results") or []
                          if not r["name"].startswith("W3")) + "."]
    slope = linearity(data)
    if slope is not None:
        lines += ["", f"Growth: log-log slope of the in-process time from 1 000 resources up: **{slope:.2f}** "
                      "(1.00 = linear; below 1 the fixed per-request cost is still being amortised)."]
    mem = data.get("memory") or {}
    if mem:
        lines += ["", f"## Memory at W3's largest size ({mem.get('largest_size'):,} resources)", "",
                  "| worker pid | RSS after start MiB | peak RSS after W3 MiB |", "|---:|---:|---:|"]
        idle = {w["pid"]: w for w in (mem.get("after_start") or {}).get("workers", [])}
        for w in (mem.get("after_w3") or {}).get("workers", []):
            lines.append(f"| {w['pid']} | {_f(idle.get(w['pid'], {}).get('rss_mib'))} | {w['peak_rss_mib']:.1f} |")
        before = (data.get("memory_before") or {}).get("after_w3", {}).get("workers", [])
        if before:
            lines += ["", "Before the performance work: peak RSS per worker "
                      + ", ".join(f"{w['peak_rss_mib']:.1f} MiB" for w in before) + "."]
    w4 = data.get("w4") or {}
    if w4:
        lines += ["", "## W4: FHIR fallback through a proxy adding 50 ms per call", "",
                  f"FHIR server: {w4.get('fhir_server')}"
                  + (f" — {w4['fhir_server_note']}" if w4.get("fhir_server_note") else "")
                  + f"; proxy: bench/delay_proxy.py, +{w4['delay_ms']:.0f} ms per call.",
                  "", f"One FHIR call through the proxy (median of all single calls of the missing keys, keep-alive): "
                      f"**{w4['one_call_ms']:.1f} ms** (slowest key {w4['one_call_slowest_ms']:.1f} ms; per key "
                      + ", ".join(f"{k} {val:.1f}" for k, val in w4["one_call_per_key_ms"].items())
                      + "; the same calls straight to the server: "
                      + ", ".join(f"{k} {val:.1f}" for k, val in w4["direct_per_key_ms"].items()) + " ms).", "",
                  "| request | missing keys | requests | p50 ms | p95 ms | max ms | x one call "
                  "| FHIR calls per request | errors | cards |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for key, label in (("five_missing", "5 keys missing"), ("all_missing", "no prefetch at all")):
            r = w4.get(key)
            if r:
                lines.append(f"| {label} | {len(r['missing_keys'])} | {r['requests']} | {r['p50_ms']:.1f} | "
                             f"{r['p95_ms']:.1f} | {r['max_ms']:.1f} | {r['p50_ms'] / w4['one_call_ms']:.2f} | "
                             f"{r['fhir_calls_per_request']} | {r['errors']} | {', '.join(r['topics'])} |")
        lines += ["", "Missing keys in the 5-key case: " + ", ".join(w4["five_missing"]["missing_keys"]) + "."]

    before_rows = data.get("throughput_before") or []
    before_in = {r["name"]: r for r in (data.get("w3_inprocess_before") or {}).get("results") or []}
    if before_rows or before_in:
        lines += ["", f"## Before / after (same run, same machine; before = {s.get('baseline')})", "",
                  "| measure | before | after | change |", "|---|---:|---:|---:|"]
        for wl in ("W1", "W2"):
            b, a = _row(before_rows, wl, "service", 8), _row(data.get("throughput") or [], wl, "service", 8)
            if a and b:
                lines.append(f"| {wl} throughput, c=8 (req/s) | {b['throughput']:,.0f} | {a['throughput']:,.0f} | "
                             f"{a['throughput'] / b['throughput']:.2f}x |")
                lines.append(f"| {wl} p50 / p99, c=8 (ms) | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | "
                             f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} | |")
        for r in (data.get("w3_inprocess") or {}).get("results") or []:
            b = before_in.get(r["name"])
            if b:
                lines.append(f"| {r['name']} in process, wall (ms) | {b['service_ms']:.2f} | {r['service_ms']:.2f} | "
                             f"{b['service_ms'] / r['service_ms']:.2f}x |")
                if b.get("service_cpu_ms") and r.get("service_cpu_ms"):
                    lines.append(f"| {r['name']} in process, CPU (ms) | {b['service_cpu_ms']:.2f} | "
                                 f"{r['service_cpu_ms']:.2f} | {b['service_cpu_ms'] / r['service_cpu_ms']:.2f}x |")
        be = data.get("w3_end_to_end_before") or []
        if be:
            a = e2e.get(be[0]["resources"])
            if a:
                lines.append(f"| W3 {be[0]['resources']:,} end to end (ms) | {be[0]['p50_ms']:.0f} | "
                             f"{a['p50_ms']:.0f} | {be[0]['p50_ms'] / a['p50_ms']:.2f}x |")
    lines += ["", "## Charts", "", f"![latency vs prefetch size]({LATENCY_SVG})", "",
              f"![throughput vs concurrency]({THROUGHPUT_SVG})", ""]
    lines += ["## Analysis", "", NOTES.read_text().strip() if NOTES.exists() else "", ""]
    (out / "benchmarks.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or ["docs"])[0])
    write_report(json.loads((out / "benchmarks.json").read_text()), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
