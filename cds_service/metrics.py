"""Prometheus metrics (prometheus-client; multiprocess mode under gunicorn).

Labels carry service ids, card topics, outcomes and coarse reasons only: never patient data.
Under gunicorn, `cds_service.server` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before
any worker imports this module, so /metrics on any worker reports the whole instance.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_LATENCY = Histogram(
    "cds_request_duration_seconds",
    "HTTP request latency by endpoint (service id for hook calls) and status",
    ["endpoint", "status"],
    buckets=LATENCY_BUCKETS,
)
CARDS_SERVED = Counter("cds_cards_served_total", "Cards returned, by service and card topic", ["service", "topic"])
FHIR_CALL_LATENCY = Histogram(
    "cds_fhir_query_duration_seconds",
    "Duration of one prefetch query against the EHR's FHIR server (all pages)",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
FHIR_FAILURES = Counter("cds_fhir_query_failures_total", "FHIR queries that failed, by coarse reason", ["reason"])
PREFETCH_MISSING = Counter(
    "cds_prefetch_unavailable_total", "Prefetch keys that could be neither prefetched nor fetched", ["key"]
)
FEEDBACK = Counter(
    "cds_feedback_total", "Feedback items stored, by service, outcome and flag", ["service", "outcome", "flag"]
)
GATE_OVERFLOWS = Counter(
    "cds_compute_gate_overflows_total",
    "Hook calls that waited the compute gate's limit and went ahead without it (compute_gate.py)",
)
SCHEMA_FAST_PATH_DISAGREEMENTS = Counter(
    "cds_schema_fast_path_disagreements_total",
    "Requests the compiled (jsonschema-rs) validator refused but the Python jsonschema one accepted, by schema",
    ["schema"],
)


def coarse_reason(reason: str | None) -> str:
    """Map a fetch failure text to a small fixed label set (bounded metric cardinality)."""
    text = (reason or "").lower()
    for needle, label in (
        ("deadline", "deadline"),
        ("timed out", "timeout"),
        ("unreachable", "unreachable"),
        ("allowlist", "allowlist"),
        ("http 401", "http-401"),
        ("http 403", "http-403"),
        ("http 404", "http-404"),
        ("http 5", "http-5xx"),
        ("http", "http-other"),
        ("malformed", "malformed-json"),
        ("size", "too-large"),
    ):
        if needle in text:
            return label
    return "other"


def exposition() -> tuple[bytes, str]:
    """The metrics text of this process, or of every worker when running under gunicorn."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
