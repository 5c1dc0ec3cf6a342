"""The benchmark suite: `make bench` (or `.venv/bin/python -m bench.run`).

Writes docs/benchmarks.json (every number), docs/benchmarks.md (the report, with targets met or
missed), docs/benchmarks-latency-vs-size.svg, docs/benchmarks-throughput-vs-concurrency.svg and
docs/benchmarks-profile.txt. Every run is bounded (BENCH_DURATION seconds per wrk run, a time budget
per W3 size) and talks to 127.0.0.1 only. See bench/README.md for what each workload does.

"Before" numbers: the same measurements on the code of a git ref (BENCH_BASELINE_REF, default
DEFAULT_BASELINE_REF below) -- `git archive` of its cds_service/ and cards/ in a temporary directory,
imported through PYTHONPATH by the server and the in-process harness -- so before and after come
from one run on one machine. BENCH_BASELINE=0 skips them.

Environment: BENCH_DURATION (s per wrk run, default 10), BENCH_WARMUP (s, default 2),
BENCH_SIZES (W3 sizes, default 10,100,1000,10000,50000), BENCH_W3_BUDGET (s per size, default 8),
BENCH_BASELINE (1/0), BENCH_BASELINE_REF, BENCH_OUT (docs directory), BENCH_WORKERS (default: the
service's default, one per core).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import requests

from bench import payloads as pl

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
LUA = BENCH / "lua" / "post.lua"
# main before the hook-engine refactor and the second performance round (issues 11 and 16)
DEFAULT_BASELINE_REF = "dcc100b"
CONCURRENCY = (1, 8, 32)
ALL_PARTS = ("throughput", "traffic", "w3", "w4", "profile", "baseline")
W4_MISSING = ("conditions", "findings", "questionnaireResponses", "medications", "serviceRequests")
W4_DELAY_MS = 50.0
PACKAGES = ("flask", "werkzeug", "gunicorn", "orjson", "fhir.resources", "fhir-core", "pydantic", "pydantic-core",
            "jinja2", "jsonschema", "sqlalchemy", "requests", "urllib3", "pyinstrument")


def log(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ------------------------------------------------------------------------------------------------
# Machine and versions
# ------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        first = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
        match = re.search(r"wrk\s+(\S+\s*\S*)", first.stdout + first.stderr)
        out["wrk"] = match.group(1).split(" [")[0] if match else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        out["wrk"] = "missing"
    try:
        out["cds-service (git)"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


# ------------------------------------------------------------------------------------------------
# The service under test: `cds-service serve` (gunicorn, production settings)
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def proc_status(pid: int, key: str) -> int | None:
    """A kB value of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Service:
    """One `cds-service serve` process tree, started and stopped by pid."""

    label: str
    workdir: Path
    pythonpath: str | None = None
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PYTHONPATH", "PROMETHEUS_"))}
        data = self.workdir / f"{self.label}-data"
        data.mkdir(parents=True, exist_ok=True)
        metrics_dir = self.workdir / f"{self.label}-metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env.update(
            {
                "CDS_ENV": "production",
                # JWT verification off: wrk cannot mint a fresh signed JWT (unique jti) per request, and the
                # floor endpoint is not authenticated either, so both sides of the ratio skip it alike.
                "CDS_AUTH_MODE": "off",
                "CDS_BENCH_FLOOR": "true",
                "CDS_HOST": "127.0.0.1",
                "CDS_PORT": str(self.port),
                "CDS_DATA_DIR": str(data),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
        )
        if os.environ.get("BENCH_WORKERS"):
            env["CDS_WORKERS"] = os.environ["BENCH_WORKERS"]
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        env.update(self.env_extra)
        return env

    def start(self) -> Service:
        self.port = free_port()
        env = self.environment()
        cli = str(VENV_BIN / "cds-service")
        help_text = subprocess.run([cli, "--help"], env=env, capture_output=True, text=True, timeout=60).stdout
        if re.search(r"\bmigrate\b", help_text):  # production does not auto-migrate: a release step
            migrated = subprocess.run([cli, "migrate"], env=env, capture_output=True, text=True, timeout=120)
            if migrated.returncode != 0:
                log(f"{self.label}: `cds-service migrate` failed: {migrated.stderr.strip()[-400:]}")
        log_file = open(self.workdir / f"{self.label}-server.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [cli, "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: server exited; see {log_file.name}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        else:
            self.stop()
            raise RuntimeError(f"{self.label}: server did not answer /healthz within 90 s")
        # every worker must be up, not only the first one
        expected = int(env.get("CDS_WORKERS") or os.cpu_count() or 1)
        while time.monotonic() < deadline and len(self.workers()) < expected:
            time.sleep(0.25)
        time.sleep(1.0)
        readyz = requests.get(f"{self.base}/readyz", timeout=5)
        self.ready = {"readyz": readyz.status_code, "workers": len(self.workers())}
        if readyz.status_code != 200:
            log(f"{self.label}: /readyz answered {readyz.status_code}: served cards are not being recorded")
        return self

    def workers(self) -> list[int]:
        if self.process is None:
            return []
        master = self.process.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _ppid(int(entry.name)) == master:
                pids.append(int(entry.name))
        return sorted(pids)

    def memory(self) -> dict[str, Any]:
        workers = self.workers()
        return {
            "workers": [
                {"pid": pid, "peak_rss_mib": round((proc_status(pid, "VmHWM") or 0) / 1024, 1),
                 "rss_mib": round((proc_status(pid, "VmRSS") or 0) / 1024, 1)}
                for pid in workers
            ]
        }

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # gunicorn master: graceful stop of its workers
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # our own session (start_new_session), by id
            process.wait(10)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# Load generation
# ------------------------------------------------------------------------------------------------
def run_wrk(url: str, body: Path | None, connections: int, duration: float, *, script: Path = LUA,
            threads: int | None = None, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    threads = threads or min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(script), url]
    env = {**os.environ, **({"BENCH_BODY": str(body)} if body else {}), **(env_extra or {})}
    before = loadavg()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"] + raw["non2xx"]
    return {
        "connections": connections,
        "threads": threads,
        "seconds": round(seconds, 2),
        "requests": raw["requests"],
        "throughput": round(raw["requests"] / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["lat_max_us"] / 1000,
        "mean_ms": round(raw["lat_mean_us"] / 1000, 3),
        "errors": errors,
        "error_detail": {k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non2xx")},
        "loadavg_before": before,
    }


def check_response(base: str, path: str, body: bytes, expected: list[str]) -> dict[str, Any]:
    """One request before the load: the answer must be 200 with the cards the fixture expects."""
    response = requests.post(base + path, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    topics = sorted(c["source"]["topic"]["code"] for c in response.json().get("cards", [])) \
        if response.status_code == 200 else []
    return {"status": response.status_code, "topics": topics, "expected": sorted(expected),
            "ok": response.status_code == 200 and topics == sorted(expected)}


def throughput_suite(service: Service, files: dict[str, Path], cases: list[pl.Payload], concurrencies: tuple[int, ...],
                     duration: float, warmup: float, with_floor: bool) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        path = f"/cds-services/{case.service_id}"
        body = files[case.name]
        check = check_response(service.base, path, body.read_bytes(), case.expected_topics)
        log(f"{service.label} {case.name}: check {check}")
        for conc in concurrencies:
            targets = [("service", path)] + ([("floor", "/_bench/floor")] if with_floor else [])
            for kind, target in targets:
                if warmup > 0:
                    run_wrk(service.base + target, body, conc, warmup)
                result = run_wrk(service.base + target, body, conc, duration)
                result.update({"workload": case.name, "kind": kind, "tree": service.label})
                if kind == "service":
                    result["check"] = check
                rows.append(result)
                log(f"{service.label} {case.name} {kind} c={conc}: {result['throughput']} req/s, "
                    f"p50 {result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms, errors {result['errors']}")
    return rows


# ------------------------------------------------------------------------------------------------
# W3: in-process and end-to-end scaling
# ------------------------------------------------------------------------------------------------
def inprocess(cases_file: Path, pythonpath: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run([sys.executable, str(BENCH / "inproc.py"), str(cases_file)], env=env,
                          capture_output=True, text=True, timeout=1800)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise RuntimeError(f"in-process harness failed ({pythonpath}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def post_timed(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return (time.perf_counter() - started) * 1000, response.status, data


def end_to_end_scaling(service: Service, files: dict[str, Path], cases: list[pl.Payload], budget: float) -> list[dict]:
    rows = []
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    for case in cases:
        body = files[case.name].read_bytes()
        path = f"/cds-services/{case.service_id}"
        elapsed, status, data = post_timed(conn, path, body)  # warm-up and check
        topics = sorted(c["source"]["topic"]["code"] for c in orjson.loads(data).get("cards", [])) \
            if status == 200 else []
        latencies: list[float] = []
        errors = 0 if status == 200 else 1
        started = time.monotonic()
        while len(latencies) < 3 or (time.monotonic() - started < budget and len(latencies) < 200):
            elapsed, status, _ = post_timed(conn, path, body)
            latencies.append(elapsed)
            errors += status != 200
        rows.append({
            "workload": case.name, "resources": case.resources, "bytes": len(body), "reps": len(latencies),
            "p50_ms": round(statistics.median(latencies), 3), "min_ms": round(min(latencies), 3),
            "max_ms": round(max(latencies), 3), "errors": errors, "topics": topics,
            "topics_ok": topics == sorted(case.expected_topics),
        })
        log(f"{service.label} e2e {case.name}: p50 {rows[-1]['p50_ms']:.1f} ms over {len(latencies)} reps")
    conn.close()
    return rows


# ------------------------------------------------------------------------------------------------
# W4: FHIR fallback through a 50 ms proxy in front of a sandbox FHIR server
# ------------------------------------------------------------------------------------------------
class FhirBackend:
    """sekmet (cds_service.tooling.sandbox) when it starts, else bench/static_fhir.py."""

    def __init__(self, chart: list[dict[str, Any]], workdir: Path):
        self.chart = chart
        self.workdir = workdir
        self.kind = ""
        self.note = ""
        self.sandbox: Any = None
        self.static: Any = None

    def start(self) -> FhirBackend:
        try:
            from cds_service.tooling.sandbox import SandboxServer

            with open(self.workdir / "sandbox-install.log", "w") as out:
                self.sandbox = SandboxServer("sekmet", port=None, out=out).start()
                self.sandbox.load([pl.transaction_bundle(self.chart)], progress=False)
            self.kind = "sekmet (cds_service.tooling.sandbox)"
            self.base_url, self.token = self.sandbox.base_url, self.sandbox.token
        except Exception as exc:  # noqa: BLE001 - any failure: fall back, and say so in the report
            if self.sandbox is not None:
                self.sandbox.stop()
                self.sandbox = None
            from bench.static_fhir import StaticFhirServer

            self.note = f"sandbox server unavailable ({type(exc).__name__}: {str(exc)[:200]})"
            log(f"W4: {self.note}; using bench/static_fhir.py")
            self.static = StaticFhirServer(self.chart, token="bench-static-token").start()
            self.kind = "bench/static_fhir.py (fallback)"
            self.base_url, self.token = self.static.base_url, self.static.token
        return self

    def stop(self) -> None:
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.static is not None:
            self.static.stop()


def start_proxy(upstream_origin: str, workdir: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.delay_proxy", "--upstream", upstream_origin, "--delay-ms", str(W4_DELAY_MS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(workdir / "proxy.log", "w"), text=True,  # noqa: SIM115
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("PROXY_READY"):
        proc.kill()
        raise RuntimeError(f"delay proxy did not start: {line!r}")
    return proc, int(line.split()[1])


def w4(workdir: Path, payload: pl.Payload, requests_n: int) -> dict[str, Any]:
    from cds_service.prefetch import render_template

    backend = FhirBackend(payload.chart, workdir).start()
    proxy = None
    try:
        origin = re.match(r"https?://[^/]+", backend.base_url).group(0)  # type: ignore[union-attr]
        proxy, proxy_port = start_proxy(origin, workdir)
        fhir_base = backend.base_url.replace(origin, f"http://127.0.0.1:{proxy_port}")
        templates = pl.service_templates()[payload.hook]
        context = payload.body["context"]
        queries = {key: render_template(templates[key], context) for key in W4_MISSING}

        # one FHIR call, as the service makes it (keep-alive session, same headers), through the proxy and direct
        session = requests.Session()
        session.trust_env = False
        headers = {"Accept": "application/fhir+json", "Prefer": "handling=strict",
                   "Authorization": f"Bearer {backend.token}"}
        single: dict[str, list[float]] = {}
        direct: dict[str, list[float]] = {}
        entries: dict[str, int] = {}
        for key, query in queries.items():
            for base, sink in ((fhir_base, single), (backend.base_url, direct)):
                session.get(f"{base}/{query}", headers=headers, timeout=10)  # warm the connection
                for _ in range(8):
                    started = time.perf_counter()
                    response = session.get(f"{base}/{query}", headers=headers, timeout=10)
                    sink.setdefault(key, []).append((time.perf_counter() - started) * 1000)
                    if response.status_code != 200:
                        raise RuntimeError(f"W4: {key} answered HTTP {response.status_code}: {response.text[:300]}")
                entries[key] = len(response.json().get("entry") or [])
        all_single = [x for values in single.values() for x in values]

        def request_body(missing: tuple[str, ...]) -> bytes:
            body = json.loads(json.dumps(payload.body))
            for key in missing:
                body["prefetch"].pop(key, None)
            if not body["prefetch"]:
                body.pop("prefetch")
            body["fhirServer"] = fhir_base
            body["fhirAuthorization"] = {"access_token": backend.token, "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "lbp-cds-service",
                                         "patient": context["patientId"]}
            return orjson.dumps(body)

        extra = {"CDS_FHIR_ALLOWLIST": fhir_base}
        results: dict[str, Any] = {}
        with Service("w4", workdir, str(ROOT), extra) as service:
            conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
            path = f"/cds-services/{payload.service_id}"
            variants = (("five_missing", W4_MISSING),
                        ("all_missing", tuple(k for k in templates if k in payload.body["prefetch"])))
            for name, missing in variants:
                body = request_body(missing)
                for _ in range(3):
                    post_timed(conn, path, body)
                calls_before = proxy_calls(proxy_port)
                latencies, errors, topics = [], 0, []
                for _ in range(requests_n if name == "five_missing" else max(5, requests_n // 2)):
                    elapsed, status, data = post_timed(conn, path, body)
                    latencies.append(elapsed)
                    if status != 200:
                        errors += 1
                    else:
                        topics = sorted(c["source"]["topic"]["code"] for c in orjson.loads(data)["cards"])
                latencies.sort()
                results[name] = {
                    "missing_keys": list(missing), "requests": len(latencies), "errors": errors,
                    "p50_ms": round(statistics.median(latencies), 2),
                    "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
                    "max_ms": round(latencies[-1], 2), "min_ms": round(latencies[0], 2),
                    "topics": topics, "topics_ok": topics == sorted(payload.expected_topics),
                    "fhir_calls_per_request": round((proxy_calls(proxy_port) - calls_before) / len(latencies), 2),
                }
                log(f"W4 {name}: p50 {results[name]['p50_ms']} ms, errors {errors}, topics {topics}")
            conn.close()
        return {
            "fhir_server": backend.kind,
            "fhir_server_note": backend.note,
            "delay_ms": W4_DELAY_MS,
            "one_call_ms": round(statistics.median(all_single), 2),
            "one_call_per_key_ms": {k: round(statistics.median(v), 2) for k, v in single.items()},
            "one_call_slowest_ms": round(max(statistics.median(v) for v in single.values()), 2),
            "direct_per_key_ms": {k: round(statistics.median(v), 2) for k, v in direct.items()},
            "entries_per_key": entries,
            **results,
        }
    finally:
        if proxy is not None:
            proxy.terminate()
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
        backend.stop()


def proxy_calls(port: int) -> int:
    """Calls the delay proxy forwarded so far (its own counter, GET /_proxy/calls, no delay)."""
    return int(requests.get(f"http://127.0.0.1:{port}/_proxy/calls", timeout=5).text)


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------
def profiles(cases_file: Path, pythonpath: str, label: str) -> str:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run([sys.executable, str(BENCH / "profile_inproc.py"), str(cases_file), label], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return f"(profile of {label} failed: {done.stderr[-1000:]})\n"
    return done.stdout


def tail_probe(workdir: Path) -> dict[str, Any] | None:
    """bench/tail_probe.py on the repeated body: 1 thread, 4 threads (a worker's app threads) sharing the
    interpreter lock, and 4 threads taking turns at the compute gate, 6 s each."""
    from bench.sessions import repeated_body

    body = repeated_body()
    path = workdir / "tail-probe-body.json"
    path.write_bytes(body.raw)
    out: dict[str, Any] = {}
    for threads, mode in ((1, ""), (4, ""), (4, "gated")):
        done = subprocess.run([sys.executable, str(BENCH / "tail_probe.py"), str(path), body.service_id,
                               str(threads), "6", mode], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            log(f"tail probe failed: {done.stderr[-800:]}")
            return None
        out[f"threads_{threads}{'_' + mode if mode else ''}"] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def baseline_tree(workdir: Path, ref: str | None) -> tuple[Path, str]:
    """The "before" code: `git archive <ref>` of cds_service/, cards/ (and openapi.yaml) in a temporary directory.

    A git ref always applies (a patch kept beside the code stops reversing as soon as the code moves
    on); the repository itself is never touched.
    """
    target = workdir / "baseline"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    ref = ref or DEFAULT_BASELINE_REF
    # what cds_service/ links to outside itself (cds_service/openapi.yaml -> ../openapi.yaml) comes along
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", ref], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split()
    paths = ["cds_service", "cards", *(p for p in ("openapi.yaml",) if p in listed)]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, *paths], capture_output=True,
                             timeout=120, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True, timeout=120)
    return target, f"git {ref} (cds_service/ and cards/)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CDS service benchmark suite (docs/benchmarks.md)")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", str(ROOT / "docs")))
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", "10")))
    parser.add_argument("--warmup", type=float, default=float(os.environ.get("BENCH_WARMUP", "2")))
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "10,100,1000,10000,50000"))
    parser.add_argument("--w3-budget", type=float, default=float(os.environ.get("BENCH_W3_BUDGET", "8")))
    parser.add_argument("--baseline", default=os.environ.get("BENCH_BASELINE", "1"))
    parser.add_argument("--baseline-ref", default=os.environ.get("BENCH_BASELINE_REF") or None,
                        help=f"git ref of the 'before' code (default {DEFAULT_BASELINE_REF})")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                        help="comma list of parts: throughput,traffic,w3,w4,profile,baseline (default: all)")
    args = parser.parse_args(argv)
    parts = set(filter(None, args.only.split(","))) or set(ALL_PARTS)
    if args.baseline in ("0", "false", "no"):
        parts.discard("baseline")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None and "throughput" in parts:
        print("wrk is not installed: run `make bench` (installs it) or apt-get install wrk", file=sys.stderr)
        return 2

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    log(f"work directory {workdir}")
    today = date.today()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    w1, w2 = pl.w1_payload(today), pl.w2_payload(today)
    scaling = [pl.scaling_payload(n, today) for n in sizes]
    files: dict[str, Path] = {}
    for payload in [w1, w2, *scaling]:
        path = workdir / (re.sub(r"[^A-Za-z0-9]+", "-", payload.name).strip("-") + ".json")
        path.write_bytes(orjson.dumps(payload.body))
        files[payload.name] = path
    cases_file = workdir / "cases.json"
    cases_file.write_text(json.dumps({
        "data_dir": str(workdir / "inproc-data"),
        "cases": [{"name": p.name, "service_id": p.service_id, "path": str(files[p.name]), "resources": p.resources,
                   "expected": p.expected_topics, "budget_s": args.w3_budget if p in scaling else 4.0}
                  for p in [w1, w2, *scaling]],
    }))

    results: dict[str, Any] = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "concurrency": list(CONCURRENCY),
            "sizes": sizes, "w3_budget_s": args.w3_budget, "baseline": None,
            "server": "cds-service serve as shipped (server.py: gunicorn asyncio worker, the app on a pool of "
                      "CDS_THREADS=4 threads per worker), workers = cores, production settings "
                      "(CDS_ENV=production) with CDS_AUTH_MODE=off and CDS_BENCH_FLOOR=true",
        },
        "payloads": {p.name: {"resources": p.resources, "bytes": files[p.name].stat().st_size,
                              "hook": p.hook, "expected": p.expected_topics} for p in [w1, w2, *scaling]},
    }
    baseline_path: Path | None = None
    if "baseline" in parts:
        baseline_path, baseline_desc = baseline_tree(workdir, args.baseline_ref)
        results["settings"]["baseline"] = baseline_desc
        log(f"baseline ({baseline_desc}) in {baseline_path}")

    try:
        if "throughput" in parts:
            with Service("after", workdir, str(ROOT)) as service:
                results["server_after"] = service.ready
                results["throughput"] = throughput_suite(service, files, [w1, w2], CONCURRENCY, args.duration,
                                                         args.warmup, with_floor=True)
            # what-if, not production settings: the same server with its SQLite database on tmpfs, where a
            # commit costs no fsync -- the share of the served-cards insert in W1/W2 (see docs/benchmarks.md)
            shm = Path("/dev/shm")
            if shm.is_dir() and os.access(shm, os.W_OK):
                db_dir = Path(tempfile.mkdtemp(prefix="cds-bench-db-", dir=shm))
                try:
                    with Service("whatif-tmpfs-db", workdir, str(ROOT), {"CDS_DATA_DIR": str(db_dir)}) as service:
                        results["throughput_whatif_tmpfs_db"] = throughput_suite(
                            service, files, [w1, w2], (8,), args.duration, args.warmup, with_floor=False)
                finally:
                    shutil.rmtree(db_dir, ignore_errors=True)
            if baseline_path is not None:
                with Service("before", workdir, str(baseline_path)) as service:
                    results["server_before"] = service.ready
                    results["throughput_before"] = throughput_suite(service, files, [w1, w2], (8,), args.duration,
                                                                    args.warmup, with_floor=False)
        if "traffic" in parts:
            from bench.traffic import traffic_suite

            with Service("after-traffic", workdir, str(ROOT)) as service:
                results["traffic"] = traffic_suite(service, workdir, args.duration, args.warmup, run_wrk, log)
            if baseline_path is not None:
                with Service("before-traffic", workdir, str(baseline_path)) as service:
                    results["traffic_before"] = traffic_suite(service, workdir, args.duration, args.warmup,
                                                              run_wrk, log)
        if "w3" in parts:
            log("W3 in-process (after)")
            results["w3_inprocess"] = inprocess(cases_file, str(ROOT))
            if baseline_path is not None:
                log("W3 in-process (before)")
                results["w3_inprocess_before"] = inprocess(cases_file, str(baseline_path))
            big = {"CDS_MAX_REQUEST_BYTES": str(max(64 << 20, 2 * max(f.stat().st_size for f in files.values())))}
            with Service("w3", workdir, str(ROOT), big) as service:
                idle = service.memory()
                results["w3_end_to_end"] = end_to_end_scaling(service, files, scaling, args.w3_budget)
                results["memory"] = {"after_start": idle, "after_w3": service.memory(),
                                     "largest_size": max(sizes)}
            if baseline_path is not None:
                with Service("w3-before", workdir, str(baseline_path), big) as service:
                    largest = [p for p in scaling if p.resources == max(p.resources for p in scaling)]
                    results["w3_end_to_end_before"] = end_to_end_scaling(service, files, largest, args.w3_budget)
                    results["memory_before"] = {"after_w3": service.memory(), "largest_size": max(sizes)}
        if "w4" in parts:
            log("W4 FHIR fallback")
            results["w4"] = w4(workdir, w1, requests_n=30)
        if "profile" in parts:
            log("profiles (pyinstrument)")
            text = profiles(cases_file, str(ROOT), "after")
            if baseline_path is not None:
                text += "\n\n" + profiles(cases_file, str(baseline_path), "before")
            probe = tail_probe(workdir)
            if probe is not None:
                results["tail_probe"] = probe
                text += "\n\n##### Repeated-body tail probe (bench/tail_probe.py)\n" + json.dumps(probe, indent=2)
            (out / "benchmarks-profile.txt").write_text(text)
            results["profile_file"] = "benchmarks-profile.txt"
    finally:
        results["machine"]["loadavg_end"] = loadavg()
        results["elapsed_s"] = round(time.time() - started, 1)
        previous = {}
        json_path = out / "benchmarks.json"
        if parts != set(ALL_PARTS) and json_path.exists():
            previous = json.loads(json_path.read_text())  # a partial run keeps the other parts' numbers
        merged = {**previous, **results}
        json_path.write_text(json.dumps(merged, indent=2) + "\n")
        log(f"wrote {json_path}")
    from bench.report import write_report

    write_report(merged, out)
    log(f"wrote {out / 'benchmarks.md'} in {time.time() - started:.0f} s")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
