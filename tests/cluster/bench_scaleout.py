"""Throughput of 1 vs 2 instances behind nginx (`make cluster-bench`; not part of `make test`).

For each layout, starts the instances on a throwaway PostgreSQL, nginx with the shipped config (TLS),
warms up, then runs a closed loop of hook calls (full prefetch, fixture patients that get cards) from
8 concurrent connections (wrk when installed, else CLIENT_PROCESSES × THREADS Python clients) for
SECONDS, and reports requests/s and latency percentiles as seen by the client. Every hook call records
its served cards in PostgreSQL, as in production.

    .venv/bin/python -m tests.cluster.bench_scaleout [--seconds 10] [--workers 1 2] [--clients 2x4]
                                                     [--client wrk|python] [--json FILE]

The client runs on the same machine and takes CPU from the servers: on a small machine the figures are
a floor, and comparing layouts is only meaningful when the machine is otherwise idle (load average is
printed with the results).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.cluster"

from .conftest import instance_env, run_migrate_concurrently  # noqa: E402
from .harness import Instance, Issuer, Load, Nginx, PgCluster, _world_readable_tmpdir, free_port, hook_requests  # noqa: E402


def _client(url: str, verify: str, seconds: float, threads: int, queue) -> None:
    load = Load(url, verify, hook_requests(limit=12), threads=threads, rate_per_thread=0, max_calls=10**7,
                feedback=False).start()
    time.sleep(seconds)
    calls = load.stop()
    queue.put([(c.started, c.ended, c.status) for c in calls])


def measure(url: str, verify: str, seconds: float, processes: int, threads: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_client, args=(url, verify, seconds, threads, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    calls = [c for result in results for c in result]
    if not calls:
        return {"requests": 0}
    start = min(c[0] for c in calls)
    end = max(c[1] for c in calls)
    ok = [c for c in calls if c[2] == 200]
    latencies = sorted((c[1] - c[0]) * 1000 for c in ok)
    return {
        "requests": len(calls),
        "failed": len(calls) - len(ok),
        "seconds": round(end - start, 2),
        "requests_per_second": round(len(ok) / (end - start), 1),
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
    }


def rss_mb(instance: Instance) -> float:
    """Resident memory of an instance: its gunicorn master and workers (its process group)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) != instance.pid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(total / 1024, 1)


def requests_per_worker(instance: Instance) -> list[int]:
    """Hook calls each worker of an instance answered (from its own multiprocess metrics file)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = []
    for path in sorted((instance.directory / "metrics").glob("histogram_*.db")):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            if metric.name == "cds_request_duration_seconds":
                # accumulate=False: bucket samples are per bucket, so their sum is the count
                total += sum(s.value for s in metric.samples if s.name.endswith("_bucket")
                             and s.labels.get("endpoint", "").startswith("lbp-"))
        counts.append(int(total))
    return counts


def measure_wrk(url: str, seconds: float, connections: int, directory: Path) -> dict:
    """The same closed loop with wrk (Debian package; far lighter on the CPU than a Python client)."""
    import re
    import subprocess

    lines = []
    for index, (service_id, body) in enumerate(hook_requests(limit=12)):
        path = directory / f"body-{index}.json"
        path.write_bytes(body)
        lines.append(f"/cds-services/{service_id} {path}")
    (directory / "bodies.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    script = Path(__file__).with_name("wrk_hooks.lua")
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
        env={**os.environ, "CDS_BENCH_BODIES": str(directory / "bodies.txt")},
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )
    out = result.stdout

    def ms(label: str) -> float | None:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 1)

    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "client": f"wrk -t2 -c{connections}",
        "requests": requests_done,
        "failed": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else None,
        "seconds": seconds,
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "latency_ms_p50": ms("50"),
        "latency_ms_p95": None,
        "latency_ms_p99": ms("99"),
    }


def run_layout(pg: PgCluster, database_url: str, count: int, workers: int, args) -> dict:
    directory = _world_readable_tmpdir("cds-cluster-bench-")
    instances: list[Instance] = []
    nginx = None
    try:
        issuer = Issuer.create(directory)
        ports = [free_port() for _ in range(count)]
        nginx = Nginx(directory, [f"127.0.0.1:{port}" for port in ports])
        env = instance_env(database_url, issuer, nginx.url)
        instances = [Instance(f"i{n}", port, env, workers, directory) for n, port in enumerate(ports)]
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_listening(90)
            instance.wait_ready(30)
        nginx.start()
        measure(nginx.url, str(nginx.cert), 2, 1, 2)  # warm-up: imports, connection pools, caches
        if args.client == "wrk":
            result = measure_wrk(nginx.url, args.seconds, args.client_processes * args.threads, directory)
        else:
            result = measure(nginx.url, str(nginx.cert), args.seconds, args.client_processes, args.threads)
            result["client"] = f"python {args.clients}"
        return {"instances": count, "workers_per_instance": workers, **result,
                "rss_mb_per_instance": [rss_mb(i) for i in instances],
                "hook_calls_per_worker": [requests_per_worker(i) for i in instances]}
    finally:
        for instance in instances:
            instance.terminate()
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per layout (default 10)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="gunicorn workers per instance")
    parser.add_argument("--clients", default="2x4", help="client processes x threads (default 2x4)")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python",
                        help="load client (default wrk when installed: much lighter than Python threads)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.client_processes, args.threads = (int(n) for n in args.clients.split("x"))
    pg = PgCluster().init()
    results = []
    try:
        pg.start()
        database_url = pg.create_database("cds")
        assert all(r.returncode == 0 for r in run_migrate_concurrently(database_url, 1))
        for workers in args.workers:
            for count in (1, 2):
                result = run_layout(pg, database_url, count, workers, args)
                result["load_average_1m"] = round(os.getloadavg()[0], 2)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        pg.destroy()
    print(f"\nmachine: {os.cpu_count()} cores; client {results[0].get('client') if results else '?'} "
          f"on the same machine; {args.seconds:.0f} s each")
    print(f"{'instances':>9} {'workers':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'RSS MB':>14}")
    for r in results:
        print(f"{r['instances']:>9} {r['workers_per_instance']:>7} {r.get('requests_per_second', 0):>7} "
              f"{r.get('latency_ms_p50')!s:>7} {r.get('latency_ms_p99')!s:>7} {r.get('failed', 0):>6} "
              f"{'+'.join(str(m) for m in r.get('rss_mb_per_instance', [])):>14}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
