"""CDS Hooks 2.0 request/response validation against the JSON Schemas shipped in the package.

Validators are compiled once at import. Errors name the offending field as a JSON path so an
integration engineer can fix the request without reading our code.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Callable
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from .metrics import SCHEMA_FAST_PATH_DISAGREEMENTS

SCHEMA_NAMES = (
    "defs",
    "request",
    "context-patient-view",
    "context-order-select",
    "context-order-sign",
    "response",
    "feedback",
)
HOOK_CONTEXT_SCHEMAS = {
    "patient-view": "context-patient-view",
    "order-select": "context-order-select",
    "order-sign": "context-order-sign",
}
#: The schemas with a compiled fast path (fast_validators); feedback needs the date-time checker.
FAST_SCHEMAS = ("request", *HOOK_CONTEXT_SCHEMAS.values())

log = logging.getLogger("cds_service.protocol")


class RequestError(Exception):
    """A client error with the HTTP status and a message that names the field."""

    def __init__(self, status: int, message: str, field: str | None = None, error: str = "bad-request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.error = error

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


#: Deepest nesting of arrays/objects a body may have. orjson parses up to 1024 levels, but jsonschema
#: and much of Python recurse per level (RecursionError → 500); no CDS Hooks request needs more than a
#: few dozen. 254 is also where orjson's serialiser stops, which makes the check a C-speed probe.
MAX_NESTING_DEPTH = 254


def load_schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("cds_service.schemas").joinpath(f"{name}.json").read_text("utf-8"))


def _python_anchors(node: Any) -> Any:
    """The schemas' ECMA-262 ``pattern``s made exact for Python's ``re``.

    In ECMA-262 (JSON Schema's dialect) ``$`` is the end of the input; in Python it also matches just
    before a final newline, so ``"p1\\n"`` would pass ``^[A-Za-z0-9]+$`` and reach the FHIR server as
    ``p1%0A``. The files stay portable; the compiled validators end patterns with ``\\Z``.
    """
    if isinstance(node, dict):
        out = {key: _python_anchors(value) for key, value in node.items()}
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("$") and not pattern.endswith("\\$"):
            out["pattern"] = pattern[:-1] + "\\Z"
        return out
    if isinstance(node, list):
        return [_python_anchors(item) for item in node]
    return node


def _inline_refs(name: str, schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of one schema with every cross-file `$ref` turned into a local `#/$defs/...` one.

    The files stay readable and shared on disk; in memory each validator is self-contained, because
    resolving a cross-file reference through the registry on every request cost about a third of a
    hook call's validation time.
    """
    local_defs: dict[str, Any] = {}

    def rewrite(node: Any, owner: str) -> Any:
        if isinstance(node, dict):
            out = {key: rewrite(value, owner) for key, value in node.items() if key != "$defs"}
            ref = node.get("$ref")
            if isinstance(ref, str) and "#/$defs/" in ref:
                file, _, pointer = ref.partition("#/$defs/")
                source = file.removesuffix(".json") or owner
                if source != name:
                    key = f"{source}__{pointer}"
                    if key not in local_defs:
                        local_defs[key] = {}  # placeholder first: definitions may refer to each other
                        local_defs[key] = rewrite(schemas[source]["$defs"][pointer], source)
                    out["$ref"] = f"#/$defs/{key}"
            return out
        if isinstance(node, list):
            return [rewrite(item, owner) for item in node]
        return node

    schema = rewrite(schemas[name], name)
    own = {key: rewrite(value, name) for key, value in schemas[name].get("$defs", {}).items()}
    if own or local_defs:
        schema["$defs"] = {**own, **local_defs}
    return schema


def _dereference(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a self-contained schema with every local ``$ref`` replaced by what it points to.

    jsonschema resolves a ``$ref`` through the ``referencing`` registry on every validation, which was
    ~40 % of validating an order hook's context (issue 16). The schemas have no recursive definitions,
    so each reference can be written in place: a bare ``{"$ref": X}`` becomes X; a ``$ref`` beside other
    keywords becomes ``allOf: [X]`` beside them (the same meaning in 2020-12, and jsonschema reports the
    errors of ``allOf`` and ``$ref`` alike: the failing subschema's own errors, not wrapped).
    """
    defs = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        out = {key: resolve(value, seen) for key, value in node.items() if key not in ("$ref", "$defs")}
        if isinstance(ref, str) and ref.startswith("#/$defs/") and "/" not in ref.removeprefix("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"recursive schema definition {name!r}: cannot be written in place")
            target = resolve(defs[name], (*seen, name))
            if not out:
                return target
            out["allOf"] = [target, *out.get("allOf", [])]
        elif ref is not None:
            out["$ref"] = ref
        return out

    resolved = resolve(schema, ())
    return resolved


@cache
def validators() -> dict[str, Draft202012Validator]:
    raw = {name: _python_anchors(load_schema(name)) for name in SCHEMA_NAMES}
    schemas = {name: _dereference(_inline_refs(name, raw)) for name in SCHEMA_NAMES}
    # The prefetch values are checked by _prefetch_errors (the same rules as defs.json#prefetchValue, in
    # plain Python): through jsonschema they cost ~1 ms a request, two thirds of all request validation.
    schemas["request"]["properties"]["prefetch"] = {"type": "object"}
    registry: Registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    checker = FormatChecker(formats=())
    checker.checks("date-time")(_is_rfc3339)
    return {
        name: Draft202012Validator(schema, registry=registry, format_checker=checker)
        for name, schema in schemas.items()
    }


@cache
def fast_validators() -> dict[str, jsonschema_rs.Draft202012Validator]:
    """jsonschema-rs validators of the request and the hook contexts: a yes/no answer ~100x faster.

    Python's jsonschema walk cost ~0.3 ms a hook request; these answer in a few µs. They only say
    valid or not: an invalid request is walked again by the Python validators, which name the field
    (see _validate). Same self-contained schemas, without _python_anchors: jsonschema-rs already
    reads ``$`` as the end of the input (ECMA-262). Formats are not checked, as in validators()
    (its checker knows only date-time, which none of these schemas use). The request's prefetch is
    left to _fast_valid, as validators() leaves it to _prefetch_errors.
    """
    raw = {name: load_schema(name) for name in SCHEMA_NAMES}
    schemas = {name: _dereference(_inline_refs(name, raw)) for name in FAST_SCHEMAS}
    schemas["request"]["properties"]["prefetch"] = {"type": "object"}
    return {
        name: jsonschema_rs.Draft202012Validator(schema, validate_formats=False)
        for name, schema in schemas.items()
    }


def _fast_valid(schema: str, instance: Any) -> bool | None:
    """True when the compiled validator accepts ``instance``, False when it refuses it, None when it
    cannot tell (a schema without a fast path, or a value it cannot convert: a lone surrogate, a
    non-string key); both of the latter leave the answer to the Python path."""
    validator = fast_validators().get(schema)
    if validator is None:
        return None
    if schema == "request":
        if not isinstance(instance, dict):
            return False
        if "prefetch" in instance:
            # The compiled validator never sees the prefetch (it can be megabytes): its type and its
            # values are checked here in Python, as validators() leaves them to _prefetch_errors.
            prefetch = instance["prefetch"]
            if not isinstance(prefetch, dict) or _prefetch_errors(prefetch):
                return False
            instance = {key: value for key, value in instance.items() if key != "prefetch"}
    try:
        return validator.is_valid(instance)
    except Exception:  # not convertible to JSON (ValueError, UnicodeEncodeError): the Python path decides
        return None


def _disagreement(schema: str) -> None:
    """The compiled validator refused what the Python one accepts: the Python answer stands (it is
    the authority on errors); counted so a divergence between the two is seen. No request content."""
    SCHEMA_FAST_PATH_DISAGREEMENTS.labels(schema=schema).inc()
    log.debug("fast schema validator refused a request the Python validator accepts (schema %s)", schema)


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _path(error: ValidationError, prefix: str) -> str:
    path = prefix
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if error.validator == "required" and isinstance(error.validator_value, list):
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in error.validator_value if name not in instance]
        if missing:
            path += f".{missing[0]}"
    elif error.validator == "dependentRequired" and isinstance(error.instance, dict):
        for name, needed in error.validator_value.items():
            if name in error.instance and any(n not in error.instance for n in needed):
                path += f".{needed[0]}"
                break
    return path


def _describe(error: ValidationError) -> str:
    if error.validator == "required":
        return "is required"
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    if error.validator == "pattern":
        return "has an invalid format"
    if error.validator == "dependentRequired":
        return "is required when fhirAuthorization is sent"
    if error.validator == "maxItems":
        return f"has more than {error.validator_value} items"
    if error.validator in {"enum", "const"}:
        allowed = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return "must be one of " + ", ".join(json.dumps(a) for a in allowed)
    return error.message[:300]


def first_error(schema: str, instance: Any, prefix: str = "$") -> tuple[str, str] | None:
    """Return (field path, description) of the most relevant schema error, or None if valid."""
    validator = validators()[schema]
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(list(e.absolute_path)), str(e.path)))
    if not errors:
        return None
    error = errors[0]
    while error.context:  # descend into anyOf/allOf to the concrete failure
        error = sorted(error.context, key=lambda e: -len(list(e.absolute_path)))[0]
    return _path(error, prefix), _describe(error)


_PREFETCH_VALUE = ("object", "null")


def _prefetch_errors(prefetch: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Schema errors of the prefetch values as (path parts, description), exactly as
    ``defs.json#/$defs/prefetchValue`` states them: a value is an object or null; a Bundle's ``link`` is
    an array of objects and its ``entry`` an array. What is inside the resources is the facts layer's
    to read (invalid resources are skipped there), as the schema's own comment says."""
    if not isinstance(prefetch, dict):
        return []  # the request schema reports it
    found: list[tuple[tuple[Any, ...], str]] = []
    for key, value in prefetch.items():
        if value is None:
            continue
        if not isinstance(value, dict):
            found.append((("prefetch", key), f"must be of type {list(_PREFETCH_VALUE)}"))
            continue
        if value.get("resourceType") != "Bundle":
            continue
        link = value.get("link", [])
        if not isinstance(link, list):
            found.append((("prefetch", key, "link"), "must be of type array"))
        else:
            found.extend((("prefetch", key, "link", index), "must be of type object")
                         for index, item in enumerate(link) if not isinstance(item, dict))
        if not isinstance(value.get("entry", []), list):
            found.append((("prefetch", key, "entry"), "must be of type array"))
    return found


def _request_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """The first error of the request schema and the prefetch values together, in first_error's order
    (fewest path parts first), so a request with several problems names the same field as before."""
    validator = validators()["request"]
    candidates: list[tuple[tuple[int, str], str, str]] = []
    for error in validator.iter_errors(body):
        order = (len(list(error.absolute_path)), str(error.path))
        while error.context:  # descend into anyOf/allOf to the concrete failure, as first_error does
            error = sorted(error.context, key=lambda e: -len(list(e.absolute_path)))[0]
        candidates.append((order, _path(error, "$"), _describe(error)))
    for parts, description in _prefetch_errors(body.get("prefetch")):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
        candidates.append(((len(parts), str(deque(parts))), path, description))
    if not candidates:
        return None
    _, path, description = min(candidates, key=lambda c: c[0])
    return path, description


def check_nesting(body: Any) -> None:
    """400 naming the field when ``body`` nests deeper than :data:`MAX_NESTING_DEPTH` levels.

    orjson's serialiser refuses the same depth, in C: a body it can write is within the limit, and the
    Python walk that names the field runs only for a body it refuses (measured: ~5% of the parse time
    on a 13 MB prefetch, where a Python walk of every body would cost ~55%).
    """
    try:
        orjson.dumps(body)
        return
    except TypeError:  # orjson.JSONEncodeError: too deep (or an integer beyond 64 bits: walk decides)
        pass
    path = _too_deep(body)
    if path is not None:
        raise RequestError(
            400, f"{path}… is nested deeper than {MAX_NESTING_DEPTH} levels", path, "too-deep"
        )


def _too_deep(body: Any) -> str | None:
    """JSON path (its first six steps) of a container below MAX_NESTING_DEPTH levels, or None."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(body, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[:6])
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, (*path, key) if len(path) < 6 else path + ("",)))
    return None


def _item_limits() -> list[tuple[str, Callable[[dict[str, Any]], Any], int]]:
    """(field, getter, maxItems) for the arrays whose length is checked before schema validation.

    The limits are the schemas' own ``maxItems`` (one owner). Checked first because the schema walk
    validates every item before it reports the length, and jsonschema's message would quote the whole
    array: 50 000 draft orders held a worker for 8 s.
    """
    defs = load_schema("defs")["$defs"]
    select = load_schema("context-order-select")["properties"]
    feedback = load_schema("feedback")["properties"]

    def context(body: dict[str, Any]) -> dict[str, Any]:
        value = body.get("context")
        return value if isinstance(value, dict) else {}

    def entries(body: dict[str, Any]) -> Any:
        orders = context(body).get("draftOrders")
        return orders.get("entry") if isinstance(orders, dict) else None

    return [
        ("$.context.draftOrders.entry", entries, defs["draftOrdersBundle"]["properties"]["entry"]["maxItems"]),
        ("$.context.selections", lambda body: context(body).get("selections"), select["selections"]["maxItems"]),
        ("$.feedback", lambda body: body.get("feedback"), feedback["feedback"]["maxItems"]),
    ]


_ITEM_LIMITS = _item_limits()


def check_counts(body: dict[str, Any]) -> None:
    """413 naming the field and the limit when a capped array is longer than the schema allows."""
    for field, getter, limit in _ITEM_LIMITS:
        value = getter(body)
        if isinstance(value, list) and len(value) > limit:
            raise RequestError(
                413, f"{field} has {len(value)} items; at most {limit} are accepted", field, "too-many-items"
            )


def _validate(schema: str, instance: Any, prefix: str = "$") -> None:
    """RequestError(400) for the first schema error; a RecursionError (deep input) is a 400 too.

    The compiled validator answers first (fast_validators); only what it refuses or cannot read is
    walked by the Python validators, which name the field exactly as before.
    """
    fast = _fast_valid(schema, instance)
    if fast:
        return
    try:
        # the request: its schema and the prefetch values (_request_problem); anything else: its schema
        problem = _request_problem(instance) if schema == "request" else first_error(schema, instance, prefix)
    except RecursionError:
        path = _too_deep(instance) or prefix
        raise RequestError(400, f"{path} is nested too deeply to validate", path, "too-deep") from None
    if problem:
        raise RequestError(400, f"{problem[0]} {problem[1]}", problem[0])
    if fast is False:
        _disagreement(schema)


def validate_request(body: Any, service_hook: str) -> None:
    """Validate a hook request for a service; raise RequestError(400/413) naming the field."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "$")
    check_nesting(body)
    check_counts(body)
    _validate("request", body)
    if body["hook"] != service_hook:
        raise RequestError(
            400,
            f"$.hook is {_shorten(body['hook'])} but this service handles {service_hook!r}",
            "$.hook",
            "wrong-hook",
        )
    _validate(HOOK_CONTEXT_SCHEMAS[service_hook], body["context"], "$.context")
    context = body["context"]
    # Only order-select defines selections (and requires draftOrders alongside); other hooks ignore them.
    if service_hook == "order-select":
        present = {
            f"{entry['resource'].get('resourceType')}/{entry['resource'].get('id')}"
            for entry in context["draftOrders"].get("entry", [])
        }
        for index, selection in enumerate(context["selections"]):
            if selection not in present:
                field = f"$.context.selections[{index}]"
                raise RequestError(400, f"{field} {_shorten(selection)} is not an order in draftOrders", field)


def _shorten(value: str, limit: int = 80) -> str:
    """A client value quoted in an error message, never more than ``limit`` characters of it."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def validate_feedback(body: Any) -> None:
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "$")
    check_nesting(body)
    check_counts(body)
    _validate("feedback", body)


def response_errors(response: Any) -> list[str]:
    """All schema and rule violations of a CDS Hooks response (used by tests and the validator)."""
    problems = [
        f"{_path(e, '$')}: {e.message[:200]}" for e in validators()["response"].iter_errors(response)
    ]
    for index, card in enumerate(response.get("cards", []) if isinstance(response, dict) else []):
        suggestions = card.get("suggestions", []) if isinstance(card, dict) else []
        if card.get("selectionBehavior") == "at-most-one":
            recommended = sum(1 for s in suggestions if s.get("isRecommended"))
            if recommended > 1:
                problems.append(f"$.cards[{index}]: {recommended} suggestions recommended with at-most-one")
    return problems
