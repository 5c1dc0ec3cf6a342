"""An in-process FHIR server over one fixture patient's resources, for `cds-service validate`.

The validation run calls the service the way an EHR does: the full prefetch AND the `fhirServer`
with a token beside it. So when a "latest N" prefetch (the 50 latest temperatures of a ward
patient) stops short of the fever window, the service completes it with a date-bounded search
exactly as in production. The server is a `requests` transport adapter mounted on the app's own
FhirClient session for a loopback URL on the default allowlist: no socket is opened and nothing
leaves the process. Searches are answered by `cds_service.tooling.fixtures.search`, the same in-memory
search the full prefetch is built with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter

from cds_service.tooling.fixtures import PLACEHOLDER_TOKEN, UnsupportedQuery, search

# port 9 (discard): should the adapter not be mounted, the call is refused, never answered by a stranger
FIXTURE_FHIR_BASE = "http://127.0.0.1:9/fixture-fhir"


class FixtureFhirAdapter(BaseAdapter):
    """Answers reads and searches under FIXTURE_FHIR_BASE from `resources`; 401 without the token."""

    def __init__(self) -> None:
        super().__init__()
        self.resources: Sequence[Mapping[str, Any]] = ()
        self.calls = 0

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        self.calls += 1
        if request.headers.get("Authorization") != f"Bearer {PLACEHOLDER_TOKEN}":
            return _response(request, 401, _outcome("login"))
        parts = urlsplit(request.url or "")
        relative = parts.path.removeprefix(urlsplit(FIXTURE_FHIR_BASE).path).strip("/")
        kind, _, ident = relative.partition("/")
        if ident:
            found = next((r for r in self.resources if r.get("resourceType") == kind and r.get("id") == ident), None)
            return _response(request, 200, found) if found else _response(request, 404, _outcome("not-found"))
        try:
            return _response(request, 200, search(self.resources, f"{kind}?{parts.query}", FIXTURE_FHIR_BASE))
        except UnsupportedQuery:
            return _response(request, 400, _outcome("not-supported"))

    def close(self) -> None:
        self.resources = ()


@contextmanager
def serving(session: requests.Session, resources: Sequence[Mapping[str, Any]]) -> Iterator[FixtureFhirAdapter]:
    """Mount the adapter on `session` with `resources` for the duration of the block."""
    adapter = FixtureFhirAdapter()
    adapter.resources = resources
    prefix = FIXTURE_FHIR_BASE + "/"
    session.mount(prefix, adapter)
    try:
        yield adapter
    finally:
        session.adapters.pop(prefix, None)
        adapter.close()


def _outcome(code: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}


def _response(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.url = request.url or ""
    response.request = request
    response.headers["Content-Type"] = "application/fhir+json"
    response._content = json.dumps(body).encode("utf-8")  # a complete body: iter_content() slices it
    response._content_consumed = True
    return response
