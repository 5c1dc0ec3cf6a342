"""The compiled (jsonschema-rs) validators only say valid or invalid; the Python jsonschema ones stay the
authority on errors (protocol._validate). A request the compiled one accepts skips the Python walk, so
the two must agree, per schema: compiled-valid ⇔ Python finds no error. Checked on every fixture body
(bench/sessions.py: W5 and W6) and on malformed variants of them, and the error a client gets must be
the one the Python path alone gives."""

from __future__ import annotations

import copy
import importlib.util
import logging
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hookreq import hook_request, lumbar_mri
from prometheus_client import REGISTRY

from cds_service import protocol
from cds_service.protocol import (
    FAST_SCHEMAS,
    HOOK_CONTEXT_SCHEMAS,
    RequestError,
    _fast_valid,
    _request_problem,
    fast_validators,
    first_error,
    validate_request,
    validators,
)

REPO = Path(__file__).resolve().parents[2]
CONTEXT_SCHEMAS = tuple(HOOK_CONTEXT_SCHEMAS.values())

#: Put in place of every field of the base bodies: wrong types, 1.0 for 1, booleans for numbers,
#: ids with a trailing newline, non-ASCII letters and digits, strings over each maxLength.
VALUES: list[Any] = [
    None, True, 0, 1, 1.0, -1, 1.5, 2**70, "", "x", "p1\n", "ünïcødé", "١٢٣", "a" * 65, "a" * 201,
    "http://" + "a" * 1994, [], [1], {}, {"resourceType": "Bundle"},
]


def _sessions() -> ModuleType:
    """bench/sessions.py, which builds the benchmark's bodies (bench is not an installed package)."""
    name = "_bench_sessions_for_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "sessions.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def fixture_bodies() -> list[dict[str, Any]]:
    sessions = _sessions()
    return [orjson.loads(body.concrete()) for body in (*sessions.w5_bodies(), *sessions.w6_bodies())]


def _without_prefetch(body: Any) -> Any:
    return {k: v for k, v in body.items() if k != "prefetch"} if isinstance(body, dict) else body


def _assert_agree(body: Any, checked: set[int] | None = None) -> dict[str, bool]:
    """Each schema's compiled and Python validators agree on ``body`` and its context (a context in
    ``checked`` by id was checked already: variants share what they do not change). Returns which
    schemas found the body (and the context, when checked here) invalid."""
    envelope = _without_prefetch(body)
    rust = fast_validators()["request"].is_valid(envelope)
    python = not any(validators()["request"].iter_errors(envelope))
    assert rust == python, ("request", body)
    fast = _fast_valid("request", body)
    assert fast is not None, body  # JSON data is always readable by jsonschema-rs
    assert fast == (_request_problem(body) is None), ("request with prefetch", body)
    invalid = {"request": not fast}
    context = body.get("context")
    if checked is not None:
        if id(context) in checked:
            return invalid
        checked.add(id(context))
    for schema in CONTEXT_SCHEMAS:
        rust = fast_validators()[schema].is_valid(context)
        assert rust == (first_error(schema, context, "$.context") is None), (schema, context)
        invalid[schema] = not rust
    return invalid


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field of a body, except inside the prefetch resources (only their Bundle structure)."""
    yield path
    if len(path) >= 2 and path[0] == "prefetch":
        if len(path) == 2 and isinstance(node, dict):
            yield from (path + (key,) for key in ("link", "entry") if key in node)
        return
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, path + (key,))


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``node`` with ``path`` set to ``value`` (or removed for _DELETE): only the containers
    along the path are copied, so the large prefetch is shared, never changed."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copied = copy.copy(node)
    if rest:
        copied[head] = _replace(node[head], rest, value)
    elif value is _DELETE:
        del copied[head]
    else:
        copied[head] = value
    return copied


_DELETE = object()


def _set(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any] | None:
    """_replace where the field's parent exists in ``body``, else None (a base without that part)."""
    node: Any = body
    for part in path[:-1]:
        if not isinstance(node, dict | list) or (part not in node if isinstance(node, dict) else part >= len(node)):
            return None
        node = node[part]
    return _replace(body, path, value) if isinstance(node, dict | list) else None


def _bases(fixture_bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fixture body per hook (with two draft orders where it has orders: every field of each is
    walked), and a hand-made one with the optional fields the fixtures never send (fhirAuthorization,
    encounterId, extension, reasonReference, a non-ServiceRequest order)."""
    bases = []
    for hook in HOOK_CONTEXT_SCHEMAS:
        bases.append(max((b for b in fixture_bodies if b["hook"] == hook),
                         key=lambda b: min(len(b["context"].get("draftOrders", {}).get("entry", [])), 2)))
    full = hook_request("order-sign", fhir_server="https://ehr.example/fhir", token="t0k3n",
                        orders=[lumbar_mri()])
    order = full["context"]["draftOrders"]["entry"][0]["resource"]
    order["reasonReference"] = [{"reference": "Condition/c1", "display": "Low back pain"}]
    order["code"]["text"] = "MRI"
    full["context"]["draftOrders"]["entry"].append({"resource": {
        "resourceType": "MedicationRequest", "id": "med-1", "status": "draft", "intent": "order",
        "code": {"coding": [{"system": "x", "code": "y"}]}}})
    full["context"]["encounterId"] = "enc-1"
    full["context"]["selections"] = ["ServiceRequest/order-1"]
    full["fhirAuthorization"]["patient"] = "p1"
    full["extension"] = {"com.example": {"a": 1}}
    full["prefetch"] = {"patient": {"resourceType": "Patient", "id": "p1"}, "none": None,
                        "bundle": {"resourceType": "Bundle", "link": [{"relation": "self"}], "entry": []}}
    bases.append(full)
    return bases


def _specific(base: dict[str, Any]) -> Iterator[dict[str, Any] | None]:
    """Named malformations: what the systematic walk does not produce on its own (None where
    ``base`` lacks the part)."""
    ctx = ("context",)
    resource = (*ctx, "draftOrders", "entry", 0, "resource")
    yield _set(base, ("fhirServer",), _DELETE)  # fhirAuthorization without fhirServer
    for value in (300, 1.0, 0, -0.0, 2**70, 1e300, True, "300", -1, 0.5, None):
        yield _set(base, ("fhirAuthorization", "expires_in"), value)
    for value in ("Bearer", "bearer", "BEARER", "Bearer\n", " Bearer", "Bearer ", ""):
        yield _set(base, ("fhirAuthorization", "token_type"), value)
    for value in ("http://x", "https://x\n", "ftp://x", "HTTP://x", " http://x", "x"):
        yield _set(base, ("fhirServer",), value)
    yield _set(base, ("hook",), "x" * 100)
    yield _set(base, ("hookInstance",), "x" * 200)
    for value in ("ServiceRequest", "MedicationRequest", "serviceRequest", "Service Request", "ServiceRequest\n",
                  "S", "Sr", None, 1):
        yield _set(base, (*resource, "resourceType"), value)
    # the if/then branch: ServiceRequest fields are typed, the same fields on another resource are not
    for resource_type in ("ServiceRequest", "MedicationRequest"):
        order = _set(base, (*resource, "resourceType"), resource_type)
        if order is None:
            continue
        for field, value in (("code", []), ("code", {"coding": {}}), ("code", {"coding": ["x"]}),
                             ("code", {"coding": [{"code": 1}]}), ("code", {"text": 1}),
                             ("code", {"coding": [{"system": None, "version": 1.0, "display": True}]}),
                             ("reasonCode", {}), ("reasonCode", [{"coding": [{"system": 1}]}]),
                             ("reasonCode", [[]]), ("reasonReference", [{"reference": 1}]),
                             ("reasonReference", [{"display": None}]), ("reasonReference", {}),
                             ("status", 1), ("intent", None), ("id", "order-1\n"), ("id", "a" * 65),
                             ("id", "ordér-1"), ("id", ""), ("unknownField", {"x": [1]})):
            yield _set(order, (*resource, field), value)
    for value in ("Practitioner/dr-1", "PractitionerRole/x", "Patient/p.1", "RelatedPerson/a-b",
                  "Doctor/x", "Practitioner/", "Practitioner/" + "a" * 64, "Practitioner/" + "a" * 65,
                  "practitioner/x", "Practitioner/x/y", "Practitioner/x\n"):
        yield _set(base, (*ctx, "userId"), value)
    for value in ("a" * 64, "١٢", "p_1", "p 1", "p1\n", "\np1", "p1\n\n", "p1\u2028"):
        yield _set(base, (*ctx, "patientId"), value)
        yield _set(base, (*ctx, "encounterId"), value)
    for value in ([], ["ServiceRequest/order-1\n"], ["ServiceRequest/" + "a" * 65], ["1/x"], ["x"] * 201):
        yield _set(base, (*ctx, "selections"), value)
    for value in ("bundle", "Bundle\n", None):
        yield _set(base, (*ctx, "draftOrders", "resourceType"), value)
    yield _set(base, (*ctx, "draftOrders", "entry"), [{"resource": {}}] * 201)
    yield _set(base, (*ctx, "draftOrders", "entry"), [{"fullUrl": "x"}])
    yield _set(base, ("prefetch",), None)
    yield _set(base, ("prefetch",), [])


def _variants(base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every field of ``base`` replaced by each of VALUES, then removed; an unknown key in every object."""
    paths = list(_paths(base))[1:]
    for path in paths:
        for value in VALUES:
            yield _replace(base, path, value)
        yield _replace(base, path, _DELETE)
    for path in ((), *paths):
        node = base
        for part in path:
            node = node[part]
        if isinstance(node, dict):
            yield _replace(base, (*path, "unknownKey"), {"x": [1, "y"]})


def _malformed(fixture_bodies: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """(variant, the hook of the service it is sent to) for every base body."""
    out: list[tuple[dict[str, Any], str]] = []
    for base in _bases(fixture_bodies):
        out.extend((body, base["hook"]) for body in (*_variants(base), *_specific(base)) if body is not None)
    rng = random.Random(2020_12)
    pool = list(out)
    for _ in range(300):  # several faults at once: each schema must still agree on the whole
        body, hook = rng.choice(pool)
        for _ in range(rng.randint(1, 3)):
            paths = list(_paths(body))[1:]
            if paths:
                body = _replace(body, rng.choice(paths), rng.choice(VALUES))
        out.append((body, hook))
    return out


@pytest.fixture(scope="module")
def malformed(fixture_bodies: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    return _malformed(fixture_bodies)


def test_every_fixture_body_is_valid_to_both(fixture_bodies: list[dict[str, Any]]) -> None:
    assert len(fixture_bodies) > 400
    for body in fixture_bodies:
        _assert_agree(body)
        assert _fast_valid("request", body) is True
        schema = HOOK_CONTEXT_SCHEMAS[body["hook"]]
        assert _fast_valid(schema, body["context"]) is True, body["context"]


def test_every_malformed_variant_gets_the_same_verdict_from_both(
    malformed: list[tuple[dict[str, Any], str]]
) -> None:
    checked: set[int] = set()
    invalid = dict.fromkeys(FAST_SCHEMAS, 0)
    for body, _ in malformed:
        for schema, refused in _assert_agree(body, checked).items():
            invalid[schema] += refused
    # the variants really exercise the error paths of every schema
    assert all(count > 300 for count in invalid.values()), invalid


def _outcome(body: dict[str, Any], hook: str) -> tuple[Any, ...]:
    try:
        validate_request(body, hook)
    except RequestError as exc:
        return exc.status, exc.error, exc.field, exc.message
    except Exception as exc:  # compared between the two paths, not hidden
        return ("raised", type(exc).__name__)
    return ("accepted",)


def test_a_client_gets_the_error_the_python_path_alone_gives(
    malformed: list[tuple[dict[str, Any], str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = [_outcome(body, hook) for body, hook in malformed]
    monkeypatch.setattr(protocol, "_fast_valid", lambda schema, instance: None)  # the code before the fast path
    slow = [_outcome(body, hook) for body, hook in malformed]
    assert fast == slow
    assert sum(outcome[0] == 400 for outcome in fast) > 1000


@pytest.mark.parametrize("field", ["patientId", "encounterId", "userId"])
def test_a_trailing_newline_in_an_id_is_refused_by_both(field: str) -> None:
    body = hook_request("order-select")
    body["context"][field] = ("Practitioner/dr-1" if field == "userId" else "p1") + "\n"
    assert not fast_validators()["context-order-select"].is_valid(body["context"])
    assert first_error("context-order-select", body["context"], "$.context") == (
        f"$.context.{field}", "has an invalid format")
    with pytest.raises(RequestError) as caught:
        validate_request(body, "order-select")
    assert caught.value.field == f"$.context.{field}"


def test_a_draft_order_id_with_a_trailing_newline_is_refused() -> None:
    body = hook_request("order-sign", orders=[lumbar_mri(order_id="order-1\n")])
    assert not fast_validators()["context-order-sign"].is_valid(body["context"])
    with pytest.raises(RequestError) as caught:
        validate_request(body, "order-sign")
    assert caught.value.field == "$.context.draftOrders.entry[0].resource.id"


class _Spy:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.seen: list[Any] = []

    def is_valid(self, instance: Any) -> bool:
        self.seen.append(instance)
        return self.answer


def test_the_prefetch_is_not_handed_to_the_compiled_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    body = hook_request("patient-view", prefetch={"patient": {"resourceType": "Patient", "id": "p1"}})
    spy = _Spy(True)
    monkeypatch.setattr(protocol, "fast_validators", lambda: {**fast_validators(), "request": spy})
    validate_request(body, "patient-view")
    assert [set(seen) for seen in spy.seen] == [{"hook", "hookInstance", "context"}]
    assert "prefetch" in body  # the client's body is left as it came


def test_the_prefetch_values_are_still_checked_on_the_fast_path() -> None:
    body = hook_request("patient-view", prefetch={"patient": "Patient/p1"})
    assert fast_validators()["request"].is_valid(_without_prefetch(body))
    with pytest.raises(RequestError) as caught:
        validate_request(body, "patient-view")
    assert caught.value.field == "$.prefetch.patient"


def test_the_python_path_decides_when_the_compiled_validator_refuses_a_valid_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    body = hook_request("order-sign", patient_id="secret-patient-42")
    monkeypatch.setattr(protocol, "fast_validators",
                        lambda: {**fast_validators(), "context-order-sign": _Spy(False)})
    name, labels = "cds_schema_fast_path_disagreements_total", {"schema": "context-order-sign"}
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    with caplog.at_level(logging.DEBUG, logger="cds_service.protocol"):
        validate_request(body, "order-sign")  # accepted: the Python path finds no error
    assert REGISTRY.get_sample_value(name, labels) == before + 1
    assert caplog.records and all("secret-patient" not in r.getMessage() for r in caplog.records)


def test_what_the_compiled_validator_cannot_read_is_left_to_the_python_path() -> None:
    """A lone surrogate (json.loads lets one through; orjson does not) in a field with a pattern: the
    compiled validator cannot encode it and raises, the Python path answers."""
    body = hook_request("patient-view")
    body["context"]["patientId"] = "p\ud800"
    assert _fast_valid("context-patient-view", body["context"]) is None
    with pytest.raises(RequestError) as caught:
        validate_request(body, "patient-view")
    assert (caught.value.field, caught.value.message) == ("$.context.patientId",
                                                           "$.context.patientId has an invalid format")
