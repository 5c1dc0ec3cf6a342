"""Hand-written hostile inputs: whatever arrives, never a 500, never a stack trace, always a JSON error
that names the problem — and clinical data that is not valid FHIR counts as "not documented".

Sections: bodies that are not a JSON object (encodings, nesting, numbers, surrogates, duplicates);
sizes (huge strings within and over the limit, chunked bodies); wrong types at every level of the
protocol (table-driven: each field of each hook's context, each prefetch key and its Bundle structure,
replaced by null / number / boolean / string / array / object); wrong types inside the FHIR resources
of every prefetch key (answered 200); invalid FHIR resources compared with the same resource absent;
thousands of draft orders and prefetch entries.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hookreq import lumbar_mri

from cds_service.registry import SERVICE_IDS
from cds_service.tooling.fixtures import (
    HOOKS,
    LoadedFixture,
    build_request,
    load_manifest,
    service_templates,
)

TODAY = date.today()
MANIFEST = load_manifest()
TEMPLATES = service_templates()
VIEW = "/cds-services/lbp-patient-view"
FEEDBACK = "/cds-services/lbp-patient-view/feedback"
#: One fixture per hook for the protocol tables: a back pain patient with a lumbar MRI order.
BASE_FIXTURE = "acute-nonspecific-mri-2wk"
#: Replacement values: null, number, boolean, string, array, object.
WRONG_VALUES: tuple[Any, ...] = (None, 7, True, "x", [], {})
SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "X-Request-ID")


def jtype(value: Any) -> str:
    """The JSON type of a value (bool is not a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def assert_clean(response: Any, *statuses: int) -> dict[str, Any] | None:
    """Not a 5xx, headers on, no trace or server banner; errors are JSON naming the problem."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, text[:500]
    if statuses:
        assert response.status_code in statuses, (response.status_code, text[:500])
    for name in SECURITY_HEADERS:
        assert response.headers.get(name), name
    for marker in ("Traceback", 'File "', "Werkzeug/", "Python/"):
        assert marker not in text, marker
    if response.status_code >= 400:
        assert response.mimetype == "application/json", response.mimetype
        body = response.get_json()
        assert isinstance(body, dict) and body.get("error") and body.get("message"), body
        return body
    return response.get_json() if response.mimetype == "application/json" else None


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    from conftest import CheckedClient, make_settings

    from cds_service.app import create_app

    application = create_app(make_settings(tmp_path_factory.mktemp("hostile"), log_level="CRITICAL",
                                           max_request_bytes=1024 * 1024))
    application.test_client_class = CheckedClient  # every 200 hook answer is checked against the schema
    yield application
    application.extensions["cds"].fhir.close()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def big_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """The default body limit (5 MiB), for the tests that send thousands of entries."""
    from conftest import CheckedClient, make_settings

    from cds_service.app import create_app

    application = create_app(make_settings(tmp_path_factory.mktemp("hostile-big"), log_level="CRITICAL"))
    application.test_client_class = CheckedClient
    yield application.test_client()
    application.extensions["cds"].fhir.close()


def fixture(slug: str = BASE_FIXTURE) -> LoadedFixture:
    return MANIFEST.get(slug).load(TODAY)


def request_for(hook: str, slug: str = BASE_FIXTURE, fixture_: LoadedFixture | None = None) -> dict[str, Any]:
    loaded = fixture_ or fixture(slug)
    if hook != "patient-view" and not loaded.orders:
        loaded = LoadedFixture(loaded.spec, loaded.bundle, [lumbar_mri(f"{slug[:50]}-mri", loaded.patient_id)])
    selections = list(loaded.spec.selected) or [f"ServiceRequest/{o['id']}" for o in loaded.orders]
    return build_request(loaded, hook, TEMPLATES[hook], selections=selections)


def post(client: FlaskClient, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


def topics(response: Any) -> list[str]:
    body = assert_clean(response, 200)
    assert body is not None
    return sorted(card["source"]["topic"]["code"] for card in body["cards"])


# --------------------------------------------------------------------- bodies that are not an object

VALID = json.dumps(request_for("patient-view")).encode()
DEEP = 100_000
RAW_BODIES: dict[str, tuple[bytes, str]] = {
    # name: (body, a word the message must contain)
    "empty": (b"", "empty"),
    "whitespace": (b"  \n\t ", "empty"),
    "null": (b"null", "JSON object"),
    "top-level-array": (b"[]", "JSON object"),
    "top-level-array-of-request": (b"[" + VALID + b"]", "JSON object"),
    "top-level-string": (b'"patient-view"', "JSON object"),
    "top-level-number": (b"7", "JSON object"),
    "top-level-true": (b"true", "JSON object"),
    "utf8-bom": (b"\xef\xbb\xbf" + VALID, "BOM"),
    "utf16-le-bom": (b"\xff\xfe" + VALID.decode().encode("utf-16-le"), "UTF-8"),
    "utf16-be": (VALID.decode().encode("utf-16-be"), "JSON"),
    "latin1": (VALID.replace(b'"patient-view"', '"patiént-view"'.encode("latin-1")), "UTF-8"),
    "invalid-continuation": (VALID.replace(b'"patient-view"', b'"patient-\xc3\x28view"'), "UTF-8"),
    "overlong-slash": (VALID.replace(b'"patient-view"', b'"patient\xc0\xafview"'), "UTF-8"),
    "raw-surrogate-bytes": (VALID.replace(b'"patient-view"', b'"patient\xed\xa0\x80view"'), "UTF-8"),
    "lone-high-surrogate": (VALID.replace(b'"patient-view"', b'"patient\\ud800view"'), "surrogate"),
    "lone-low-surrogate": (VALID.replace(b'"patient-view"', b'"patient\\udc00view"'), "surrogate"),
    "surrogate-in-key": (VALID.replace(b'"hook"', b'"\\udbff"', 1), "surrogate"),
    "1e999": (VALID.replace(b'"hook"', b'"extension": {"n": 1e999}, "hook"', 1), "infinity"),
    "-1e999": (VALID.replace(b'"hook"', b'"extension": {"n": -1e999}, "hook"', 1), "infinity"),
    "NaN": (VALID.replace(b'"hook"', b'"extension": {"n": NaN}, "hook"', 1), "JSON"),
    "Infinity": (VALID.replace(b'"hook"', b'"extension": {"n": Infinity}, "hook"', 1), "JSON"),
    "trailing-garbage": (VALID + b"}", "after"),
    "two-documents": (VALID + VALID, "after"),
    "truncated": (VALID[:-1], "JSON"),
    "single-quotes": (b"{'hook': 'patient-view'}", "JSON"),
    "comment": (b"// hi\n" + VALID, "JSON"),
    "deep-arrays": (b"[" * DEEP + b"]" * DEEP, "depth"),
    "deep-objects": (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "depth"),
    "deep-inside-valid-request": (
        VALID.replace(b'"hook"', b'"extension": {"n": ' + b"[" * DEEP + b"]" * DEEP + b'}, "hook"', 1), "depth"
    ),
    "deep-unclosed": (b"[" * DEEP, "depth"),
}


@pytest.mark.parametrize("path", [VIEW, FEEDBACK], ids=["invoke", "feedback"])
@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_body_that_is_not_a_json_object_is_400_naming_the_problem(client: FlaskClient, path: str, name: str) -> None:
    data, word = RAW_BODIES[name]
    response = client.post(path, data=data, content_type="application/json")
    body = assert_clean(response, 400)
    assert body is not None
    assert body["error"] in {"malformed-json", "bad-request"}
    assert body["field"] == "$"
    assert word.lower() in body["message"].lower(), body["message"]
    assert len(body["message"]) < 400  # never an echo of the body


def test_deep_nesting_within_the_parser_limit_inside_a_resource_is_answered(client: FlaskClient) -> None:
    """900 levels inside a relevant Condition: parsed by orjson, then refused with a 400 naming the
    resource (issue 15 item 3: deeper than protocol.MAX_NESTING_DEPTH), never a crash."""
    body = request_for("patient-view")
    condition = body["prefetch"]["conditions"]["entry"][0]["resource"]
    nested: Any = "leaf"
    for _ in range(900):
        nested = [nested]
    condition["extension"] = [{"url": "http://example.org/deep", "valueString": "x", "extension": nested}]
    condition["note"] = [{"text": "x", "extension": [{"url": "http://example.org/d", "valueReference": nested}]}]
    answer = assert_clean(post(client, VIEW, body), 400)
    assert answer is not None and answer["error"] == "too-deep"
    assert answer["field"].startswith("$.prefetch.conditions.entry[0].resource."), answer


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("application/fhir+json", 200),
        ("APPLICATION/JSON", 200),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/xml", 415),
        ("", 415),
    ],
)
def test_content_types(client: FlaskClient, content_type: str, status: int) -> None:
    response = client.post(VIEW, data=VALID, headers={"Content-Type": content_type} if content_type else {})
    body = assert_clean(response, status)
    if status == 415:
        assert body is not None and body["field"] == "Content-Type"


def test_duplicate_keys_last_one_wins_for_validation_and_use_alike(client: FlaskClient) -> None:
    """One parse, one value: the value validated is the value used (no parser differential inside)."""
    body = request_for("patient-view")
    text = json.dumps(body)
    # hook: the first spelling is wrong, the last right → accepted as patient-view
    both = text.replace('"hook": "patient-view"', '"hook": "order-sign", "hook": "patient-view"', 1)
    assert_clean(client.post(VIEW, data=both, content_type="application/json"), 200)
    # and the other way round → refused as order-sign
    wrong = text.replace('"hook": "patient-view"', '"hook": "patient-view", "hook": "order-sign"', 1)
    refused = assert_clean(client.post(VIEW, data=wrong, content_type="application/json"), 400)
    assert refused is not None and refused["error"] == "wrong-hook"
    # patientId: the prefetched Patient is checked against the value that is used
    patient_id = body["context"]["patientId"]
    other = text.replace(f'"patientId": "{patient_id}"', f'"patientId": "{patient_id}", "patientId": "someone-else"', 1)
    mismatch = assert_clean(client.post(VIEW, data=other, content_type="application/json"), 400)
    assert mismatch is not None and mismatch["field"] == "$.prefetch.patient"


# --------------------------------------------------------------------------------------------- sizes


def test_huge_strings_within_the_limit_are_answered(client: FlaskClient) -> None:
    body = request_for("patient-view")
    body["extension"] = {"padding": "x" * 900_000}
    assert_clean(post(client, VIEW, body), 200)
    body = request_for("patient-view")
    body["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["text"] = "y" * 900_000
    assert_clean(post(client, VIEW, body), 200)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patientId", "p" * 500_000),
        ("userId", "Practitioner/" + "u" * 500_000),
        ("hookInstance", "h" * 500_000),
        ("hook", "patient-view" * 40_000),
        ("fhirServer", "http://127.0.0.1/" + "f" * 500_000),
    ],
)
def test_huge_strings_in_protocol_fields_are_400_without_echo(client: FlaskClient, field: str, value: str) -> None:
    body = request_for("patient-view")
    if field in ("patientId", "userId"):
        body["context"][field] = value
    else:
        body[field] = value
    response = assert_clean(post(client, VIEW, body), 400)
    assert response is not None
    assert response["field"].endswith(field)
    assert len(json.dumps(response)) < 1000


def test_body_over_the_limit_is_413(client: FlaskClient) -> None:
    body = request_for("patient-view")
    body["extension"] = {"padding": "x" * 1_100_000}
    response = assert_clean(post(client, VIEW, body), 413)
    assert response is not None and str(1024 * 1024) in response["message"]
    feedback = {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z",
                              "overrideReason": {"userComment": "z" * 1_100_000}}]}
    assert_clean(post(client, FEEDBACK, feedback), 413)


@pytest.mark.parametrize(("size", "status"), [(900_000, 200), (1_100_000, 413), (20_000_000, 413)])
def test_chunked_body_without_content_length_is_held_to_the_same_limit(
    client: FlaskClient, size: int, status: int
) -> None:
    """A streamed (chunked) body has no Content-Length; gunicorn marks it wsgi.input_terminated."""
    body = request_for("patient-view")
    body["extension"] = {"padding": ""}
    data = json.dumps(body).replace('"padding": ""', '"padding": "' + "x" * size + '"').encode()
    response = client.post(VIEW, input_stream=io.BytesIO(data), content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert_clean(response, status)


# ------------------------------------------------------------------- wrong types: protocol fields


def _walk(node: Any, path: str, depth: int) -> Iterator[tuple[str, Any]]:
    yield path, node
    if depth == 0:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}", depth - 1)
    elif isinstance(node, list) and node:
        yield from _walk(node[0], f"{path}[0]", depth - 1)


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    parts = path.removeprefix("$").replace("[", ".[").strip(".").split(".")
    node: Any = body
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value


def protocol_paths(hook: str) -> list[tuple[str, Any]]:
    """Every protocol field of a request for this hook: top level, fhirAuthorization, context (and the
    draft order elements the schema types), each prefetch value and its Bundle structure."""
    body = request_for(hook)
    body["fhirServer"] = "http://127.0.0.1:9/fhir"  # full prefetch: never called
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "cds", "patient": "p"}
    body["extension"] = {"vendor": "x"}
    _add_optional_context(body, hook)
    paths: list[tuple[str, Any]] = []
    for key in ("hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "prefetch", "extension"):
        paths.append((f"$.{key}", body[key]))
    paths += [(f"$.fhirAuthorization.{k}", v) for k, v in body["fhirAuthorization"].items()]
    paths += [(p, v) for p, v in _walk(body["context"], "$.context", 1) if p != "$.context"]
    if "draftOrders" in body["context"]:
        orders = body["context"]["draftOrders"]
        paths += [(p, v) for p, v in _walk(orders, "$.context.draftOrders", 3)
                  if p.count(".") <= 5 and "subject" not in p and "category" not in p and ".meta" not in p
                  and p != "$.context.draftOrders" and not p.endswith(".type")]
        order = orders["entry"][0]["resource"]
        base = "$.context.draftOrders.entry[0].resource"
        paths += [(f"{base}.{name}", order[name]) for name in
                  ("resourceType", "id", "status", "intent", "code", "reasonCode", "reasonReference")
                  if name in order]
        for name in ("code", "reasonCode"):
            if name in order:
                paths += [(p, v) for p, v in _walk(order[name], f"{base}.{name}", 3) if p != f"{base}.{name}"]
    if "selections" in body["context"]:
        paths.append(("$.context.selections[0]", body["context"]["selections"][0]))
    seen: set[str] = set()
    unique = []
    for path, value in paths:
        if path not in seen:
            seen.add(path)
            unique.append((path, value))
    return unique


def _add_optional_context(body: dict[str, Any], hook: str) -> None:
    """Optional context fields present, so that they are mutated too: encounterId, a reasonReference on
    the first draft order, and on patient-view the other hooks' fields (ignored there, but typed)."""
    context = body["context"]
    context["encounterId"] = "enc-1"
    if hook == "patient-view":
        context["selections"] = ["ServiceRequest/x"]
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": lumbar_mri("x")}]}
    context["draftOrders"]["entry"][0]["resource"]["reasonReference"] = [{"reference": "Condition/c1"}]


#: Draft-order elements the rules do not read: not type-checked (any JSON accepted, never a crash).
UNTYPED_ORDER_ELEMENTS = (".intent",)


@pytest.mark.parametrize("hook", HOOKS)
def test_wrong_types_in_protocol_fields_are_400_naming_the_field(client: FlaskClient, hook: str) -> None:
    path_ = f"/cds-services/{SERVICE_IDS[hook]}"
    problems: list[str] = []
    cases = 0
    for field, original in protocol_paths(hook):
        for value in WRONG_VALUES:
            if value == original and jtype(value) == jtype(original):
                continue
            body = request_for(hook)
            body["fhirServer"] = "http://127.0.0.1:9/fhir"
            body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "cds", "patient": "p"}
            body["extension"] = {"vendor": "x"}
            _add_optional_context(body, hook)
            _set(body, field, value)
            response = post(client, path_, body)
            cases += 1
            answer = assert_clean(response, 200, 400, 412)
            type_changed = jtype(value) != jtype(original)
            if type_changed and not field.endswith(UNTYPED_ORDER_ELEMENTS) and response.status_code != 400:
                problems.append(f"{field} = {value!r}: {response.status_code}, expected 400")
            if response.status_code == 400 and type_changed and answer is not None:
                named = answer.get("field", "")
                if not (named.startswith(field) or field.startswith(named) and named != "$"):
                    problems.append(f"{field} = {value!r}: error names {named!r}")
    assert cases > 60
    assert not problems, "\n".join(problems)


def _feedback() -> dict[str, Any]:
    return {"feedback": [
        {"card": "0b8e4f7e-0c57-4b8c-9a51-8f2f5d0f6c11", "outcome": "accepted",
         "acceptedSuggestions": [{"id": "5a4c2d9e-7b1f-4e2a-8c3d-1e9f0a6b7c22"}],
         "outcomeTimestamp": "2026-01-01T10:00:00Z", "extension": {"vendor": "x"}},
        {"card": "1c9e4f7e-0c57-4b8c-9a51-8f2f5d0f6c11", "outcome": "overridden",
         "overrideReason": {"reason": {"system": "http://example.org/override", "code": "patient-declined",
                                       "display": "Patient declined"}, "userComment": "ok"},
         "outcomeTimestamp": "2026-01-01T10:00:00+01:00"},
    ]}


def test_wrong_types_in_feedback_are_400_naming_the_field(client: FlaskClient) -> None:
    base = _feedback()
    fields = [(p, v) for p, v in _walk(base, "$", 5) if p != "$"]
    fields = [(p, v) for p, v in fields if not p.startswith("$.feedback[0].extension.")]
    second = _walk(base["feedback"][1], "$.feedback[1]", 4)
    fields += [(p, v) for p, v in second if "overrideReason" in p]
    problems: list[str] = []
    for field, original in fields:
        for value in WRONG_VALUES:
            if jtype(value) == jtype(original):
                continue
            body = _feedback()
            _set(body, field, value)
            response = post(client, FEEDBACK, body)
            answer = assert_clean(response, 400)
            named = answer["field"] if answer is not None else ""
            if not (named.startswith(field) or (field.startswith(named) and named not in ("$", "$.feedback"))):
                problems.append(f"{field} = {value!r}: error names {named!r}")
    assert len(fields) > 12
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("hook", HOOKS)
def test_wrong_types_in_prefetch_structure(client: FlaskClient, hook: str) -> None:
    """Each prefetch key: the value, its resourceType, and a Bundle's entry/link/entry[0]/resource."""
    path_ = f"/cds-services/{SERVICE_IDS[hook]}"
    problems: list[str] = []
    for key in TEMPLATES[hook]:
        base = request_for(hook)
        bundle = base["prefetch"].get(key)
        targets = [f"$.prefetch.{key}", f"$.prefetch.{key}.resourceType"]
        if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
            targets += [f"$.prefetch.{key}.entry", f"$.prefetch.{key}.link"]
            if bundle.get("entry"):
                targets += [f"$.prefetch.{key}.entry[0]", f"$.prefetch.{key}.entry[0].resource",
                            f"$.prefetch.{key}.entry[0].resource.resourceType"]
        for target in targets:
            for value in WRONG_VALUES:
                body = copy.deepcopy(base)
                _set(body, target, value)
                response = post(client, path_, body)
                answer = assert_clean(response, 200, 400)
                expected = _expected_prefetch_status(target, value, key)
                if response.status_code not in expected:
                    problems.append(f"{target} = {value!r}: {response.status_code}, expected {expected}")
                elif response.status_code == 400 and answer is not None and not answer["field"].startswith(
                    f"$.prefetch.{key}"
                ):
                    problems.append(f"{target} = {value!r}: error names {answer['field']!r}")
    assert not problems, "\n".join(problems)


def _expected_prefetch_status(target: str, value: Any, key: str) -> set[int]:
    kind = jtype(value)
    if target == f"$.prefetch.{key}":
        return {200} if kind == "null" else {400}  # null = "no such data"; anything else is not a resource
    if target.endswith(".resourceType") and ".entry" not in target:
        # another resource type than expected: data of no use, not an error; for the Patient, not the patient
        return {200, 400} if kind == "string" else {400}
    if target.endswith((".entry", ".link")):
        return {200} if kind == "array" else {400}
    if target.endswith(".entry[0]"):
        return {200} if kind == "object" else {400}  # an entry without resource carries no data
    if target.endswith(".entry[0].resource"):
        return {400}
    if target.endswith(".entry[0].resource.resourceType"):
        return {200} if kind == "string" else {400}
    raise AssertionError(target)


# ------------------------------------------------------------- wrong types inside FHIR resources


def _fixture_with_entries(hook: str, key: str) -> LoadedFixture:
    """The first fixture whose prefetch for ``key`` holds a resource; if none has, the base fixture with
    one Observation added that the ``key`` search finds (a coded finding)."""
    for spec in MANIFEST.fixtures:
        loaded = spec.load(TODAY)
        body = request_for(hook, fixture_=loaded)
        value = body["prefetch"].get(key)
        if isinstance(value, dict) and (value.get("resourceType") != "Bundle" or value.get("entry")):
            return loaded
    loaded = fixture()
    template = TEMPLATES[hook][key]
    assert template.startswith("Observation?"), key
    system, _, code = template.split("code=", 1)[1].split("&", 1)[0].split(",")[0].partition("|")
    bundle = copy.deepcopy(loaded.bundle)
    bundle["entry"].append({"resource": {
        "resourceType": "Observation", "id": f"{key}-added", "status": "final",
        "subject": {"reference": f"Patient/{loaded.patient_id}"}, "effectiveDateTime": TODAY.isoformat(),
        "code": {"coding": [{"system": system, "code": code}]}, "valueBoolean": True,
    }})
    return LoadedFixture(loaded.spec, bundle, loaded.orders)


#: Array elements the pre-validation relevance filter of clinical/facts.py reads before fhir.resources
#: validates the resource: a scalar there once crashed it (500); a regression test below.
SCALAR_SENSITIVE_ELEMENTS = {
    ("ImagingStudy", "procedureCode"),
    ("ImagingStudy", "series"),
    ("FamilyMemberHistory", "condition"),
}


def _resource_paths(resource: dict[str, Any]) -> list[str]:
    """Every element of a resource down to two levels below the top (arrays: their first item)."""
    return [path for path, _ in _walk(resource, "", 3) if path and path != ".resourceType"]


def _resource_keys() -> list[tuple[str, str]]:
    keys = [("patient-view", key) for key in TEMPLATES["patient-view"]]
    keys += [("order-sign", key) for key in TEMPLATES["order-sign"] if key not in TEMPLATES["patient-view"]]
    return keys


@pytest.mark.parametrize(("hook", "key"), _resource_keys(), ids=[f"{h}-{k}" for h, k in _resource_keys()])
def test_wrong_types_inside_fhir_resources_are_not_documented_data(client: FlaskClient, hook: str, key: str) -> None:
    """Every element of a real resource of this key replaced by each wrong type: always 200 (the
    resource is data the rules skip), the Patient id aside (400: not the patient in context)."""
    loaded = _fixture_with_entries(hook, key)
    base = request_for(hook, fixture_=loaded)
    assert base["prefetch"][key], key
    value = base["prefetch"][key]
    resource_path = f"$.prefetch.{key}" + ("" if value.get("resourceType") != "Bundle" else ".entry[0].resource")
    resource = value if value.get("resourceType") != "Bundle" else value["entry"][0]["resource"]
    problems: list[str] = []
    for element in _resource_paths(resource):
        for replacement in WRONG_VALUES:
            body = copy.deepcopy(base)
            _set(body, resource_path + element, replacement)
            response = post(client, f"/cds-services/{SERVICE_IDS[hook]}", body)
            allowed = (200, 400) if key == "patient" and element == ".id" else (200,)
            if response.status_code not in allowed:
                problems.append(f"{resource['resourceType']}{element} = {replacement!r}: {response.status_code}")
            else:
                assert_clean(response)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("kind", "element"), sorted(SCALAR_SENSITIVE_ELEMENTS))
def test_scalar_in_array_elements_read_before_validation(client: FlaskClient, kind: str, element: str) -> None:
    hook = "order-sign"
    key = {"ImagingStudy": "imagingStudies", "FamilyMemberHistory": "familyHistory"}[kind]
    loaded = _fixture_with_entries(hook, key)
    body = request_for(hook, fixture_=loaded)
    resource = body["prefetch"][key]["entry"][0]["resource"]
    if element == "series":
        resource.pop("procedureCode", None)  # otherwise a relevant procedure code decides first
    resource[element] = 7
    assert post(client, f"/cds-services/{SERVICE_IDS[hook]}", body).status_code == 200


# ------------------------------------------------- invalid FHIR resources = the data is not documented


def _edit(loaded: LoadedFixture, resource_id: str, change: Callable[[dict[str, Any]], Any]) -> LoadedFixture:
    bundle = copy.deepcopy(loaded.bundle)
    kept = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource.get("id") == resource_id and change(resource) is False:
            continue
        kept.append(entry)
    bundle["entry"] = kept
    return LoadedFixture(loaded.spec, bundle, copy.deepcopy(loaded.orders))


INVALID_RESOURCES = {
    # name: (fixture, resource id, invalid edit, the same datum absent)
    "condition-code-is-a-string": (
        "acute-nonspecific-mri-2wk", "acute-nonspecific-mri-2wk-cond1",
        lambda r: r.update(code="low back pain"), lambda r: False,
    ),
    "condition-coding-is-an-object": (
        "acute-nonspecific-mri-2wk", "acute-nonspecific-mri-2wk-cond1",
        lambda r: r["code"].update(coding=r["code"]["coding"][0]), lambda r: False,
    ),
    "patient-birthdate-yesterday": (
        "fracture-age-70-today", "fracture-age-70-today-pt",
        lambda r: r.update(birthDate="yesterday"), lambda r: r.pop("birthDate"),
    ),
    "patient-birthdate-impossible-day": (
        "fracture-age-70-today", "fracture-age-70-today-pt",
        lambda r: r.update(birthDate="1956-02-30"), lambda r: r.pop("birthDate"),
    ),
    "patient-birthdate-in-the-future": (
        "fracture-age-70-today", "fracture-age-70-today-pt",
        lambda r: r.update(birthDate="2999-01-01"), lambda r: r.pop("birthDate"),
    ),
    "observation-value-high": (
        "fever-temperature-38", "fever-temperature-38-obs2",
        lambda r: r["valueQuantity"].update(value="high"), lambda r: False,
    ),
    "observation-value-is-a-list": (
        "fever-temperature-38", "fever-temperature-38-obs2",
        lambda r: r.update(valueQuantity=[r["valueQuantity"]]), lambda r: False,
    ),
}


@pytest.mark.parametrize("name", list(INVALID_RESOURCES))
def test_invalid_fhir_resource_counts_as_not_documented(client: FlaskClient, name: str) -> None:
    slug, resource_id, invalid, absent = INVALID_RESOURCES[name]
    loaded = fixture(slug)
    original = topics(post(client, VIEW, request_for("patient-view", fixture_=loaded)))
    without = topics(post(client, VIEW, request_for("patient-view", fixture_=_edit(loaded, resource_id, absent))))
    assert original != without, "this resource must matter for the comparison to mean anything"
    broken = topics(post(client, VIEW, request_for("patient-view", fixture_=_edit(loaded, resource_id, invalid))))
    assert broken == without


# ---------------------------------------------------------------------------------- big Bundles


def _lab_order(index: int, patient_id: str) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": f"lab-{index}", "status": "draft", "intent": "order",
            "subject": {"reference": f"Patient/{patient_id}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC"}]}}


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_thousands_of_draft_orders(big_client: FlaskClient, hook: str) -> None:
    """Up to the cap (200 draft orders, issue 15 item 10) other orders change nothing; 3 000 are a 413."""
    client = big_client
    path_ = f"/cds-services/{SERVICE_IDS[hook]}"
    body = request_for(hook)
    baseline = topics(post(client, path_, body))
    patient_id = body["context"]["patientId"]
    entries = body["context"]["draftOrders"]["entry"]
    room = 200 - len(entries)
    body["context"]["draftOrders"]["entry"] = entries + [{"resource": _lab_order(i, patient_id)} for i in range(room)]
    assert topics(post(client, path_, body)) == baseline  # the lab orders change nothing
    body["context"]["draftOrders"]["entry"] = entries + [{"resource": _lab_order(i, patient_id)} for i in range(3000)]
    answer = assert_clean(post(client, path_, body), 413)
    assert answer is not None and answer["field"] == "$.context.draftOrders.entry" and "200" in answer["message"]


def test_many_imaging_orders_get_one_card_each(client: FlaskClient) -> None:
    body = request_for("order-sign")
    patient_id = body["context"]["patientId"]
    body["context"]["draftOrders"]["entry"] = [{"resource": lumbar_mri(f"mri-{i}", patient_id)} for i in range(200)]
    cards = topics(post(client, "/cds-services/lbp-imaging-order-sign", body))
    assert len(cards) == 200 and len(set(cards)) == 1


@pytest.mark.parametrize("hook", HOOKS)
def test_thousands_of_prefetch_entries(big_client: FlaskClient, hook: str) -> None:
    client = big_client
    path_ = f"/cds-services/{SERVICE_IDS[hook]}"
    body = request_for(hook)
    baseline = topics(post(client, path_, body))
    patient_id = body["context"]["patientId"]
    conditions = body["prefetch"]["conditions"]
    back_pain = conditions["entry"][0]["resource"]
    # 1000 copies of the back pain Condition (relevant: each is validated) + 3000 unrelated conditions
    conditions["entry"] += [{"resource": {**copy.deepcopy(back_pain), "id": f"copy-{i}"}} for i in range(1000)]
    conditions["entry"] += [
        {"resource": {"resourceType": "Condition", "id": f"htn-{i}", "subject": {"reference": f"Patient/{patient_id}"},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}}}
        for i in range(3000)
    ]
    body["prefetch"]["findings"].setdefault("entry", []).extend(
        {"resource": {"resourceType": "Observation", "id": f"o-{i}", "status": "final",
                      "subject": {"reference": f"Patient/{patient_id}"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "valueQuantity": {"value": 60 + i % 40, "unit": "/min"}}}
        for i in range(3000)
    )
    assert topics(post(client, path_, body)) == baseline
