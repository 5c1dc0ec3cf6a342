"""Running a population through the hook engine in parallel worker processes.

Each worker builds the runtime once (the site's knowledge, cards and rollout; no database, no client
authentication) and answers, per patient, what an EHR would have asked at the evaluation date:
patient-view, and order-select for each lumbar imaging ServiceRequest of the export (sent as the one
draft order, selected). Those ServiceRequests are the orders being placed, so they are left out of the
patient's history; every other resource is served as the EHR would: the full prefetch, computed in
memory from the discovery templates, and beside it a FHIR server (``tooling.fixture_fhir``, in
process, no socket) for what the service fetches itself — e.g. the rest of a fever window a "latest N"
prefetch stops short of. Nothing is recorded. A worker returns counts only: no patient identifier
leaves it.
"""

from __future__ import annotations

import os
import resource
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from multiprocessing import get_context
from typing import Any

from cds_service.clinical.imaging_orders import lumbar_imaging_orders
from cds_service.clinical.model import PatientRecord
from cds_service.protocol import RequestError
from cds_service.settings import Settings
from cds_service.tooling.fixture_fhir import FIXTURE_FHIR_BASE, serving
from cds_service.tooling.fixtures import PLACEHOLDER_TOKEN, draft_orders_bundle, prefetch_for

SIMULATION_USER = "Practitioner/population-simulation"
CHUNK = 25  # patients per task: small enough for a smooth progress bar, large enough to amortise pickling


@dataclass
class Tally:
    """Counts over the patients a worker (or the whole run) evaluated."""

    patients: int = 0
    orders: int = 0  # lumbar imaging ServiceRequests evaluated through order-select
    shown: Counter = field(default_factory=Counter)  # (hook, topic) → cards returned
    silent: Counter = field(default_factory=Counter)  # (hook, topic) → silent cards (would have shown)
    patients_with: Counter = field(default_factory=Counter)  # topic → patients with at least one card (any hook)
    cards_per_patient: Counter = field(default_factory=Counter)  # n cards shown (all hooks) → patients
    errors: Counter = field(default_factory=Counter)  # error code → calls
    cpu_seconds: float = 0.0  # CPU time of the worker processes (user + system)

    def add(self, other: Tally) -> None:
        self.patients += other.patients
        self.orders += other.orders
        for name in ("shown", "silent", "patients_with", "cards_per_patient", "errors"):
            getattr(self, name).update(getattr(other, name))


_RUNTIME: Any = None


def _init_worker(settings: Settings) -> None:
    global _RUNTIME
    from cds_service.tooling.validation_report import evaluation_runtime

    _RUNTIME = evaluation_runtime(settings)


def _is_lumbar_imaging(resource: dict[str, Any], knowledge: Any) -> bool:
    """Whether the imaging rules would treat this ServiceRequest, placed as a draft, as lumbar imaging
    (the rules' own classifier: coded studies and plainly named text-only ones)."""
    if resource.get("resourceType") != "ServiceRequest":
        return False
    draft = {**resource, "status": "draft"}
    probe = PatientRecord(patient_id="", patient=None, resources=(), draft_orders=(draft,))
    return bool(lumbar_imaging_orders(probe, knowledge, "order-sign"))


def evaluate_patient(runtime: Any, resources: Sequence[dict[str, Any]], day: date, tally: Tally) -> None:
    """Add one patient's answers to *tally*."""
    engine = runtime.engine
    services = {s.hook: s for s in runtime.services.values()}
    orders = [r for r in resources if _is_lumbar_imaging(r, runtime.knowledge)]
    history = [r for r in resources if not any(r is o for o in orders)]
    patient_id = next(str(r["id"]) for r in resources if r.get("resourceType") == "Patient")
    calls: list[tuple[str, dict[str, Any]]] = [("patient-view", {"userId": SIMULATION_USER, "patientId": patient_id})]
    for order in orders:
        draft = {**order, "status": "draft"}
        reference = f"ServiceRequest/{order['id']}"
        calls.append(("order-select", {"userId": SIMULATION_USER, "patientId": patient_id,
                                       "draftOrders": draft_orders_bundle([draft]), "selections": [reference]}))
    shown_topics: set[str] = set()
    cards = 0
    authorization = {"access_token": PLACEHOLDER_TOKEN, "token_type": "Bearer", "expires_in": 300,
                     "scope": "patient/*.read", "subject": "lbp-cds-service", "patient": patient_id}
    with serving(runtime.fhir.session, history):
        for number, (hook, context) in enumerate(calls):
            service = services[hook]
            body = {"hook": hook, "hookInstance": f"simulation-{number}", "context": context,
                    "prefetch": prefetch_for(history, service.prefetch, context),
                    "fhirServer": FIXTURE_FHIR_BASE, "fhirAuthorization": authorization}
            try:
                outcome = engine.invoke(service.id, body, now=day, record=False)
            except RequestError as exc:
                tally.errors[exc.error] += 1
                continue
            if outcome.status != 200:
                tally.errors[str(outcome.body.get("error", outcome.status))] += 1
                continue
            for decision in outcome.decisions:
                tally.shown[(hook, decision.topic)] += 1
                shown_topics.add(decision.topic)
            for decision, disposition in outcome.withheld:
                if disposition == "silent":
                    tally.silent[(hook, decision.topic)] += 1
            cards += len(outcome.decisions)
    tally.patients += 1
    tally.orders += len(orders)
    tally.cards_per_patient[cards] += 1
    for topic in shown_topics:
        tally.patients_with[topic] += 1


def _run_chunk(chunk: list[list[dict[str, Any]]], day: date) -> Tally:
    tally = Tally()
    for resources in chunk:
        evaluate_patient(_RUNTIME, resources, day, tally)
    return tally


def run(patients: Sequence[list[dict[str, Any]]], day: date, *, workers: int | None = None,
        settings: Settings | None = None, progress: bool = True) -> Tally:
    """Evaluate every patient in *workers* processes (default: every core) with a progress bar on stderr."""
    from tqdm import tqdm

    settings = (settings or Settings.from_env()).with_overrides(auth_mode="off", console_enabled=False)
    workers = max(1, workers or os.cpu_count() or 1)
    chunks = [list(patients[i:i + CHUNK]) for i in range(0, len(patients), CHUNK)]
    total = Tally()
    bar = tqdm(total=len(patients), unit="patient", file=sys.stderr, disable=not progress, smoothing=0.1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # fork: workers start in milliseconds and share the parent's imported modules (Linux)
    with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_worker,
                             initargs=(settings,)) as pool:
        pending = {pool.submit(_run_chunk, chunk, day): len(chunk) for chunk in chunks[: workers * 4]}
        queued = iter(chunks[workers * 4:])
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                bar.update(pending.pop(future))
                total.add(future.result())
                following = next(queued, None)
                if following is not None:
                    pending[pool.submit(_run_chunk, following, day)] = len(following)
    bar.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers have been joined: their CPU time counts
    total.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return total
