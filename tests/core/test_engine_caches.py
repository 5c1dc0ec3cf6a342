"""The hook engine's per-process caches (issue 16) change no answer.

Every fixture patient on every hook, evaluated by an engine with its caches off and by one with them on
(a first call that fills them and a second that hits them): the same Decisions and the same cards, uuids
aside. An ordering session's order-select and order-sign calls with identical patient data build the
facts once. The facts never read draft orders or selections (what makes them shareable between the
calls of one selection).
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cds_service.clinical import build_facts
from cds_service.clinical.model import PatientRecord
from cds_service.runtime import Runtime
from cds_service.settings import Settings
from cds_service.tooling.fixtures import build_request, load_manifest, service_templates

TODAY = date.today()
NOW = datetime(TODAY.year, TODAY.month, TODAY.day, 10, 30)
MANIFEST = load_manifest()
TEMPLATES = service_templates()


def _engine(tmp_path: Path, cached: bool) -> Any:
    settings = Settings(environment="development", auth_mode="off", data_dir=tmp_path, log_level="WARNING")
    engine = Runtime.build(settings, with_store=False).engine
    if not cached:
        engine.facts_cache.max_entries = 0
        engine.card_cache.max_entries = 0
    return engine


def _without_uuids(card: Any) -> Any:
    if isinstance(card, dict):
        return {k: _without_uuids(v) for k, v in card.items() if k != "uuid"}
    if isinstance(card, list):
        return [_without_uuids(v) for v in card]
    return card


def _bodies() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for spec in MANIFEST.fixtures:
        fixture = spec.load(shift_to=TODAY)
        hooks = ["patient-view"] + (["order-select", "order-sign"] if spec.orders and spec.selected else [])
        out += [(spec.slug, hook, build_request(fixture, hook, TEMPLATES[hook])) for hook in hooks]
    return out


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return _engine(tmp_path_factory.mktemp("off"), False), _engine(tmp_path_factory.mktemp("on"), True)


def test_caches_change_no_decision_and_no_card(engines: tuple[Any, Any]) -> None:
    off, on = engines
    bodies = _bodies()
    assert len(bodies) > 100
    for slug, hook, body in bodies:
        service = off.service_for_hook(hook).id
        plain = off.invoke(service, body, now=NOW, record=False)
        first = on.invoke(service, body, now=NOW, record=False)
        second = on.invoke(service, body, now=NOW, record=False)
        for outcome in (first, second):
            assert outcome.status == plain.status, (slug, hook)
            assert outcome.decisions == plain.decisions, (slug, hook)
            assert _without_uuids(outcome.body) == _without_uuids(plain.body), (slug, hook)
        uuids = [c["uuid"] for c in first.cards + second.cards]
        assert len(set(uuids)) == len(uuids)  # every answer has fresh card ids
    assert on.facts_cache.hits >= len(bodies)  # the second calls really came from the cache
    assert on.card_cache.hits > 0


def test_an_ordering_session_builds_the_facts_once(tmp_path: Path) -> None:
    engine = _engine(tmp_path, True)
    spec = MANIFEST.get("acute-nonspecific-mri-2wk")
    fixture = spec.load(shift_to=TODAY)
    order = fixture.orders[0]
    reference = f"ServiceRequest/{order['id']}"
    select = engine.service_for_hook("order-select").id
    for orders in ([{k: v for k, v in order.items() if k != "reasonCode"}], [order], fixture.orders):
        body = build_request(fixture, "order-select", TEMPLATES["order-select"], selections=[reference])
        body["context"]["draftOrders"]["entry"] = [{"resource": o} for o in orders]
        assert engine.invoke(select, body, now=NOW, record=False).status == 200
    sign = build_request(fixture, "order-sign", TEMPLATES["order-sign"])
    engine.invoke(engine.service_for_hook("order-sign").id, sign, now=NOW, record=False)
    assert (engine.facts_cache.misses, engine.facts_cache.hits) == (1, 3)


def test_the_facts_cache_key_follows_the_day_and_the_data(tmp_path: Path) -> None:
    engine = _engine(tmp_path, True)
    fixture = MANIFEST.get("axspa-four-criteria").load(shift_to=TODAY)
    body = build_request(fixture, "patient-view", TEMPLATES["patient-view"])
    service = engine.service_for_hook("patient-view").id
    engine.invoke(service, body, now=NOW, record=False)
    engine.invoke(service, body, now=datetime(NOW.year, NOW.month, NOW.day, 16, 0), record=False)  # same day
    assert engine.facts_cache.misses == 1
    engine.invoke(service, body, now=date.fromordinal(TODAY.toordinal() + 1), record=False)  # next day
    assert engine.facts_cache.misses == 2
    body["prefetch"]["patient"]["gender"] = "female" if body["prefetch"]["patient"].get("gender") == "male" else "male"
    engine.invoke(service, body, now=NOW, record=False)  # other data
    assert engine.facts_cache.misses == 3


def test_facts_do_not_depend_on_draft_orders_or_selections(tmp_path: Path) -> None:
    knowledge = _engine(tmp_path, False).runtime.knowledge
    when = NOW.replace(tzinfo=ZoneInfo("UTC"))
    checked = 0
    for spec in MANIFEST.fixtures:
        if not spec.orders:
            continue
        fixture = spec.load(shift_to=TODAY)
        patient = fixture.patient
        resources = tuple(r for r in fixture.resources if r["resourceType"] != "Patient")
        bare = PatientRecord(patient_id=fixture.patient_id, patient=patient, resources=resources)
        with_orders = dataclasses.replace(bare, draft_orders=tuple(fixture.orders),
                                          selections=tuple(spec.selected))
        assert build_facts(bare, knowledge, when) == build_facts(with_orders, knowledge, when), spec.slug
        checked += 1
    assert checked > 20
