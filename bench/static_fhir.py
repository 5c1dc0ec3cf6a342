"""A tiny static FHIR R4 server: W4's fallback when the sandbox servers (cds_service.tooling.sandbox) cannot start.

It answers reads (``Type/id``) and the searches of the service's prefetch templates over an in-memory
list of resources, with the same search semantics the tests use (cds_service.tooling.fixtures.search), and
requires ``Authorization: Bearer <token>``. Loopback only. Used only when `bench/run.py` cannot start
sekmet; the report says which server W4 ran against.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cds_service.tooling.fixtures import search


class StaticFhirServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, resources: list[dict[str, Any]], token: str, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.resources = resources
        self.token = token
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"

    def start(self) -> StaticFhirServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: StaticFhirServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._send(401, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]})
            return
        path = self.path.split("/fhir/", 1)[-1]
        if "?" in path:
            self._send(200, search(self.server.resources, path, self.server.base_url))
            return
        kind, _, ident = path.partition("/")
        for resource in self.server.resources:
            if resource.get("resourceType") == kind and resource.get("id") == ident:
                self._send(200, resource)
                return
        self._send(404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
