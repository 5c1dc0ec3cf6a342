"""A local FHIR server for security tests: serves resources from memory and records every request.

Used to prove what the service does on the wire: that an off-allowlist ``fhirServer`` receives no
request at all (SSRF), that the EHR's access token goes only where it may, and that the fetch path
is exercised for real (logging tests). Searches are answered by ``cds_service.tooling.fixtures.search``,
the same in-memory search the fixtures' full prefetch is built with.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_service.tooling.fixtures import UnsupportedQuery, search


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: str
    authorization: str | None


class FhirRecorder:
    """Answers ``<base>/Type/id`` reads and ``<base>/Type?…`` searches over ``resources``."""

    def __init__(self, server: HTTPServer, prefix: str = "/fhir") -> None:
        self.server = server
        self.prefix = prefix
        self.resources: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        server.expect_request(re.compile(".*")).respond_with_handler(self._handle)

    @property
    def base(self) -> str:
        return self.server.url_for(self.prefix)

    def serve(self, resources: Sequence[dict[str, Any]]) -> None:
        self.resources = list(resources)

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(
                Recorded(
                    request.method,
                    request.path,
                    request.query_string.decode("latin-1"),
                    request.headers.get("Authorization"),
                )
            )
        relative = request.path.removeprefix(self.prefix).strip("/")
        kind, _, ident = relative.partition("/")
        if ident:
            found = next((r for r in self.resources if r.get("resourceType") == kind and r.get("id") == ident), None)
            if found is None:
                return _fhir(_outcome("not-found"), 404)
            return _fhir(found)
        query = f"{kind}?{request.query_string.decode('utf-8')}"
        try:
            return _fhir(search(self.resources, query, base_url=self.base))
        except UnsupportedQuery:
            return _fhir(_outcome("not-supported"), 400)


def _outcome(code: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}


def _fhir(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/fhir+json")


def start_recorder() -> tuple[HTTPServer, FhirRecorder]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server, FhirRecorder(server)


def stop_recorder(server: HTTPServer) -> None:
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def fhir_recorder() -> Iterator[FhirRecorder]:
    server, recorder = start_recorder()
    yield recorder
    stop_recorder(server)
