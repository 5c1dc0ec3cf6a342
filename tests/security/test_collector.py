"""Issue 15 item 12: the cyclic garbage collector is never paused by a request, large or not."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
from flask import Flask
from hookreq import empty_prefetch, hook_request

from cds_service import server
from cds_service.collector import GC_THRESHOLDS


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def _large_body(app: Flask, resources: int) -> bytes:
    templates = app.extensions["cds"].services["lbp-patient-view"].prefetch
    body = hook_request(prefetch=empty_prefetch(templates))
    entries = [{"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                             "code": {"coding": [{"system": "http://example.org", "code": f"x{i}"}]},
                             "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": i}}}
               for i in range(resources)]
    body["prefetch"]["crp"] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return orjson.dumps(body)


def test_the_collector_stays_enabled_and_runs_during_a_large_request(
    make_app: Callable[..., Flask], restore_gc: None
) -> None:
    app = make_app(max_request_bytes=50 * 1024 * 1024)
    raw = _large_body(app, 20_000)
    assert len(raw) > 1024 * 1024  # far above the old 256 KiB pause threshold
    samples: list[bool] = []
    collections: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(gc.isenabled())
            time.sleep(0.001)

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collections.append(info["generation"])

    sampler = threading.Thread(target=sample)
    gc.callbacks.append(count)
    sampler.start()
    try:
        response = app.test_client().post("/cds-services/lbp-patient-view", data=raw,
                                          content_type="application/json")
    finally:
        done.set()
        sampler.join()
        gc.callbacks.remove(count)
    assert response.status_code == 200
    assert samples and all(samples), "the collector was disabled during the request"
    assert collections, "no collection ran during a request that allocated millions of objects"


def test_worker_start_tunes_thresholds_without_disabling(restore_gc: None) -> None:
    gc.disable()
    server._freeze_startup_objects(None)
    assert gc.isenabled()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
