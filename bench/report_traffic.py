"""The W5 / W6 / repeated-body part of docs/benchmarks.md (bench/report.py calls it)."""

from __future__ import annotations

from typing import Any

from bench.traffic import REPEATED, W5, W6

# issue 16's targets: (workload, minimum throughput as a fraction of the floor, maximum p99/p50)
TARGETS = ((W5, 0.4, 3.0), (W6, 0.25, None), (REPEATED, None, 3.0))


def _row(rows: list[dict[str, Any]], workload: str, kind: str) -> dict[str, Any] | None:
    return next((r for r in rows or [] if r["workload"] == workload and r["kind"] == kind), None)


def _ratio(rows: list[dict[str, Any]], workload: str) -> float | None:
    hook, floor = _row(rows, workload, "service"), _row(rows, workload, "floor")
    return hook["throughput"] / floor["throughput"] if hook and floor and floor["throughput"] else None


def traffic_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = (data.get("traffic") or {}).get("rows") or []
    out: list[dict[str, Any]] = []
    for workload, min_ratio, max_tail in TARGETS:
        hook, floor = _row(rows, workload, "service"), _row(rows, workload, "floor")
        if hook and floor and min_ratio is not None:
            ratio = hook["throughput"] / floor["throughput"]
            out.append({
                "target": f"{workload.split(' ')[0]} hook throughput >= {min_ratio} x floor at 8 connections",
                "measured": f"{hook['throughput']:,.0f} / {floor['throughput']:,.0f} req/s = {ratio:.2f} x floor",
                "ok": ratio >= min_ratio,
                "gap": None if ratio >= min_ratio else
                f"{ratio / min_ratio:.0%} of the target; needs {min_ratio / ratio:.1f}x the throughput "
                f"({min_ratio * floor['throughput']:,.0f} req/s)",
            })
        if hook and max_tail is not None and hook["p50_ms"] > 0:
            tail = hook["p99_ms"] / hook["p50_ms"]
            label = "repeated body" if workload == REPEATED else workload.split(" ")[0]
            out.append({
                "target": f"{label} p99 <= {max_tail:g} x p50 at 8 connections",
                "measured": f"p99 {hook['p99_ms']:.1f} ms / p50 {hook['p50_ms']:.1f} ms = {tail:.2f}",
                "ok": tail <= max_tail,
                "gap": None if tail <= max_tail else f"p99 is {tail:.1f} x p50 ({tail / max_tail:.1f}x over)",
            })
    after_rows = [r for r in rows if r.get("check")]
    if after_rows:
        wrong = sum(len(r["check"].get("wrong") or []) for r in after_rows)
        bodies = sum(r["check"]["bodies"] for r in after_rows)
        out.append({
            "target": "W5 / W6 / repeated body: each body gets the fixture's expected cards (checked before the load)",
            "measured": f"{bodies} bodies checked, {wrong} wrong",
            "ok": wrong == 0,
            "gap": None if wrong == 0 else f"{wrong} bodies",
        })
    return out


def traffic_errors(data: dict[str, Any]) -> tuple[int, int]:
    """(errors, wrong answers) of the W5 / W6 / repeated-body loads. Wrong answers count for the tree
    under test only: the "before" tree runs older clinical rules, which the current fixtures outgrew."""
    errors = wrong = 0
    for key in ("traffic", "traffic_before"):
        for row in (data.get(key) or {}).get("rows") or []:
            errors += row.get("errors", 0)
            if key == "traffic" and row.get("check"):
                wrong += len(row["check"].get("wrong") or [])
    return errors, wrong


def traffic_section(data: dict[str, Any]) -> list[str]:
    traffic = data.get("traffic") or {}
    rows = traffic.get("rows") or []
    if not rows:
        return []
    before = (data.get("traffic_before") or {}).get("rows") or []
    lines = ["", "## W5, W6 and one body repeated (the CDS Hooks sandbox's traffic; wrk, 8 connections)", "",
             f"W5: {traffic.get('sessions')} ordering sessions (one per fixture patient with an order; patient-view, "
             "order-select x3 with the same prefetch and a growing draftOrders, order-sign), each session a new "
             "patient; W6: every fixture body in rotation, every request a new patient; repeated: one order-select "
             "body. Bodies built by bench/sessions.py in the sandbox's request shape, sent by bench/lua/sessions.lua "
             "(W5/W6: one wrk thread per connection, sessions in order) and bench/lua/post.lua (repeated). Average "
             "body sizes: " + ", ".join(f"{k.split(' ')[0]} {v:,} bytes"
                                        for k, v in (traffic.get("bytes") or {}).items()) + ".", "",
             "| workload | tree | endpoint | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | errors | x floor "
             "| server CPU ms / request |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, source in (("after", rows), ("before", before)):
        for workload in (W5, W6, REPEATED):
            for kind in ("service", "floor"):
                r = _row(source, workload, kind)
                if not r:
                    continue
                ratio = _ratio(source, workload) if kind == "service" else None
                lines.append(
                    f"| {workload if kind == 'service' else 'floor, same bodies'} | {label} | "
                    f"{'hook' if kind == 'service' else '/_bench/floor'} | {r['throughput']:,.0f} | "
                    f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99_ms'] / r['p50_ms']:.1f} | "
                    f"{r['errors']} | {'' if ratio is None else f'{ratio:.2f}'} | "
                    f"{'' if r.get('server_cpu_ms') is None else format(r['server_cpu_ms'], '.2f')} |")
    answers_after = traffic.get("answers") or {}
    answers_before = (data.get("traffic_before") or {}).get("answers") or {}
    if answers_after and answers_before:
        differ = sum(1 for wl, per in answers_after.items() for name, topics in per.items()
                     if (answers_before.get(wl) or {}).get(name) not in (None, topics))
        lines += ["", f"The \"before\" tree ({(data.get('settings') or {}).get('baseline')}) answered {differ} of "
                      f"{sum(len(p) for p in answers_after.values())} bodies with other cards than this tree: the "
                      "clinical rules and fixtures changed since (revision 2), not the performance work (the "
                      "same-cards check of this work is tests/core/test_engine_caches.py: caches on vs off, every "
                      "fixture)."]
    checks = [(r["workload"], r["check"]) for r in rows if r.get("check")]
    lines += [""] + [f"- {name}: every body checked before the load ({c['bodies']} bodies, HTTP "
                     f"{c['statuses']}; {c['with_expectation']} with the fixture's expected cards, "
                     f"{len(c['wrong'])} wrong)." for name, c in checks]
    if before:
        lines += ["", "| measure (c=8) | before | after | change |", "|---|---:|---:|---:|"]
        for workload in (W5, W6, REPEATED):
            b, a = _row(before, workload, "service"), _row(rows, workload, "service")
            if a and b:
                rb, ra = _ratio(before, workload), _ratio(rows, workload)
                lines.append(f"| {workload}: hook req/s | {b['throughput']:,.0f} | {a['throughput']:,.0f} | "
                             f"{a['throughput'] / b['throughput']:.2f}x |")
                if rb is not None and ra is not None:
                    lines.append(f"| {workload}: x floor | {rb:.2f} | {ra:.2f} | |")
                lines.append(f"| {workload}: p50 / p99 ms | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | "
                             f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} | |")
    return lines
