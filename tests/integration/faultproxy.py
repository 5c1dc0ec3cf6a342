"""A loopback HTTP proxy in front of a real FHIR server: records every request, injects faults.

    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.fault = lambda path: Fault.status(500) if path.startswith("Condition") else None
        ... send the service to proxy.base_url ...
        proxy.records  # every request: method, path (relative to the base, with query), headers

Requests are forwarded with the headers the caller sent (Authorization included), so the real
server judges the token. Absolute links to the real server in answers are rewritten to the proxy,
so paging stays on the proxy. Bound to 127.0.0.1; every sleep and upstream call is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

MAX_DELAY = 5.0


@dataclass(frozen=True)
class Fault:
    kind: str  # status | delay | malformed | drop | redirect | rewrite | body | endless
    status: int = 200
    seconds: float = 0.0
    location: str = ""
    query: Callable[[list[tuple[str, str]]], list[tuple[str, str]]] | None = None
    body: Callable[[bytes], bytes] | None = None

    @staticmethod
    def http(status: int) -> Fault:
        return Fault("status", status=status)

    @staticmethod
    def delay(seconds: float) -> Fault:
        return Fault("delay", seconds=min(seconds, MAX_DELAY))

    @staticmethod
    def malformed() -> Fault:
        return Fault("malformed")

    @staticmethod
    def drop() -> Fault:
        return Fault("drop")

    @staticmethod
    def redirect(location: str) -> Fault:
        return Fault("redirect", status=302, location=location)

    @staticmethod
    def rewrite_query(fn: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]) -> Fault:
        return Fault("rewrite", query=fn)

    @staticmethod
    def rewrite_body(fn: Callable[[bytes], bytes]) -> Fault:
        return Fault("body", body=fn)

    @staticmethod
    def endless(seconds: float = MAX_DELAY) -> Fault:
        """A 200 whose body never ends: JSON is streamed in small chunks for `seconds` (bounded)."""
        return Fault("endless", seconds=min(seconds, MAX_DELAY))


@dataclass
class Record:
    method: str
    path: str  # relative to the FHIR base, with the query string
    headers: dict[str, str]
    status: int = 0


class _LoopbackServer:
    """A threaded HTTP server on a free loopback port, serving while the `with` block runs."""

    def _listen(self, host: str, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/fhir"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass
class FaultProxy(_LoopbackServer):
    upstream: str  # the real server's FHIR base URL
    fault: Callable[[str], Fault | None] = lambda path: None
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.upstream = self.upstream.rstrip("/")
        self._upstream_path = urlsplit(self.upstream).path.rstrip("/")
        self._lock = threading.Lock()
        self._local = threading.local()  # one upstream session per handler thread
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self._listen("127.0.0.1", Handler, "fault-proxy")

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False
        return session

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.records]

    def reset(self) -> None:
        with self._lock:
            self.records.clear()

    # ------------------------------------------------------------------ request handling

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("/fhir", 1)[-1].lstrip("/") if h.path.startswith("/fhir") else h.path.lstrip("/")
        record = Record(h.command, path, {k: v for k, v in h.headers.items()})
        with self._lock:
            self.records.append(record)
        fault = self.fault(path)
        try:
            if fault is None or fault.kind in ("rewrite", "body", "delay"):
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.seconds)
                self._forward(h, record, path, fault)
            elif fault.kind == "status":
                self._send(
                    h,
                    record,
                    fault.status,
                    b'{"resourceType":"OperationOutcome","issue":[{"severity":'
                    b'"error","code":"exception","diagnostics":"injected fault"}]}',
                )
            elif fault.kind == "malformed":
                self._send(h, record, 200, b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
            elif fault.kind == "redirect":
                self._send(h, record, fault.status, b"", {"Location": fault.location})
            elif fault.kind == "endless":
                record.status = 200
                h.send_response(200)
                h.send_header("Content-Type", "application/fhir+json")
                h.end_headers()
                h.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
                stop = time.monotonic() + fault.seconds
                while time.monotonic() < stop:
                    h.wfile.write(b'{"resource": {"resourceType": "Basic", "id": "x"}},' * 64)
                    h.wfile.flush()
                    time.sleep(0.05)
                h.close_connection = True
            elif fault.kind == "drop":
                record.status = -1
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts): fine
            h.close_connection = True

    def _forward(self, h: BaseHTTPRequestHandler, record: Record, path: str, fault: Fault | None) -> None:
        target, _, query = path.partition("?")
        params = parse_qsl(query, keep_blank_values=True)
        if fault is not None and fault.query is not None:
            params = fault.query(params)
        url = f"{self.upstream}/{target}" + (f"?{urlencode(params)}" if params else "")
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("authorization", "accept", "prefer")}
        response = self._session().get(url, headers=headers, timeout=(3, 20), allow_redirects=False)
        body = response.content.replace(self.upstream.encode(), self.base_url.encode())
        if fault is not None and fault.body is not None:
            body = fault.body(body)
        extra = {"Location": response.headers["Location"]} if "Location" in response.headers else {}
        self._send(
            h, record, response.status_code, body, extra, response.headers.get("Content-Type", "application/fhir+json")
        )

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        record: Record,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/fhir+json",
    ) -> None:
        record.status = status
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)


class TrapServer(_LoopbackServer):
    """Listens on a loopback address off the service's allowlist; counts any request it gets."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        trap = self
        self.hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                trap.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._listen(host, Handler, "trap")
