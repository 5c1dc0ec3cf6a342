"""FHIR R4B validation of one resource (fhir.resources), with its coded elements' validation reused.

Why (issue 16, profiled): validating a resource costs 70–100 µs, and most of that is fhir_core's
Python validators, which run once for every nested element. The resource-level rules are cheap; the
CodeableConcepts (``code``, ``category``, ``clinicalStatus``…) are the bulk, and they are the same
in every chart: a body temperature's ``code`` is the same LOINC concept for every patient.

How the verdict stays exactly that of a full validation:

* fhir.resources validates a nested element by calling the element model's ``model_validate`` on
  the dict, and accepts an instance of that model as already validated (pydantic does not validate
  instances again). A concept validated here once is handed to the resource model as that instance:
  the same call on the same content, made earlier.
* Only a concept that *passed* is kept; one that fails is passed as written, so the resource fails
  with the same error, at the same place, as before.
* The resource itself, and every element that is not a CodeableConcept, is validated on every call.

The memo is keyed by the concept's exact JSON bytes, holds valid concepts made of codings only
(system, version, code, display, userSelected: terminology). A concept with free text, an id or
extensions may say something about the patient and is validated in place every time, never kept. The
memo is bounded and is shared by the threads of one process.
tests/clinical/test_validation_memo.py compares the verdicts with a full validation.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cache
from typing import Any, get_args, get_origin

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.codeableconcept import CodeableConcept

#: Concepts kept at most; then the memo is emptied and filled again (a chart's codes come back at once).
MEMO_MAX = 4096

_memo: dict[bytes, CodeableConcept] = {}
_memo_lock = threading.Lock()


def validate(resource: dict[str, Any]) -> str | None:
    """None when the resource is valid FHIR R4B, else a short reason (the first error)."""
    try:
        model = get_fhir_model_class(resource["resourceType"])
        model.model_validate(_with_validated_concepts(model, resource))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "skip and report"
        return first_error(exc)
    return None


def first_error(exc: Exception) -> str:
    """The first validation error as "<location>: <message>" (no value: it may be patient data)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            return f"{loc}: {first.get('msg', exc)}" if loc else str(first.get("msg", exc))
        except Exception:  # noqa: BLE001
            pass
    return str(exc).splitlines()[0][:200]


def _with_validated_concepts(model: type, resource: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of *resource* whose valid CodeableConcepts are validated instances (or itself)."""
    fields = _concept_fields(model)
    if not fields:
        return resource
    out: dict[str, Any] | None = None
    for key, repeats in fields:
        value = resource.get(key)
        if value is None:
            continue
        if repeats:
            if not isinstance(value, list):
                continue
            replaced = [_validated(item) for item in value]
            if all(new is old for new, old in zip(replaced, value, strict=True)):
                continue
        else:
            replaced = _validated(value)
            if replaced is value:
                continue
        if out is None:
            out = dict(resource)
        out[key] = replaced
    return resource if out is None else out


#: What a concept may hold to be kept: codings, each of terminology elements only.
_CONCEPT_KEYS = frozenset({"coding"})
_CODING_KEYS = frozenset({"system", "version", "code", "display", "userSelected"})


def _terminology_only(value: dict[str, Any]) -> bool:
    codings = value.get("coding")
    return (value.keys() <= _CONCEPT_KEYS and isinstance(codings, list)
            and all(isinstance(c, dict) and c.keys() <= _CODING_KEYS for c in codings))


def _validated(value: Any) -> Any:
    """The validated CodeableConcept for a valid concept of terminology only, else *value* unchanged."""
    if not isinstance(value, dict) or not _terminology_only(value):
        return value
    try:
        key = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # not plain JSON (e.g. an integer beyond 64 bits)
        return value
    concept = _memo.get(key)
    if concept is not None:
        return concept
    try:
        concept = CodeableConcept.model_validate(value)
    except Exception:  # noqa: BLE001 - invalid: left as written, the resource's validation reports it
        return value
    with _memo_lock:
        if len(_memo) >= MEMO_MAX:
            _memo.clear()
        _memo[key] = concept
    return concept


@cache
def _concept_fields(model: type) -> tuple[tuple[str, bool], ...]:
    """(JSON name, is a list) of the resource model's top-level CodeableConcept elements."""
    found: list[tuple[str, bool]] = []
    model_fields: Mapping[str, Any] = getattr(model, "model_fields", {})
    for name, field in model_fields.items():
        element, repeats = _element_type(field.annotation)
        if element is CodeableConcept:
            found.append((field.alias or name, repeats))
    return tuple(found)


def _element_type(annotation: Any) -> tuple[Any, bool]:
    """The element model of a field's annotation (``X``, ``X | None``, ``List[X] | None``), and
    whether it repeats."""
    repeats = False
    while True:
        origin = get_origin(annotation)
        if origin is None:
            break
        args = [a for a in get_args(annotation) if a is not type(None)]
        if origin is list:
            repeats = True
        if len(args) != 1:
            return None, False
        annotation = args[0]
    klass = getattr(annotation, "get_model_klass", None)
    return (klass() if callable(klass) else None), repeats
