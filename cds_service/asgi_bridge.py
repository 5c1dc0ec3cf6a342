"""The Flask (WSGI) app behind an asyncio front: a request reaches a thread only once it has fully arrived.

Why (issue 15, slow clients): with gunicorn's ``gthread`` worker a thread reads the request, so 200
clients trickling a body one byte per second held every thread and ``/healthz`` timed out. Here the
event loop of gunicorn's ``asgi`` worker reads headers and body (thousands of idle connections cost
a few KB each); the WSGI app runs in a bounded thread pool with the complete body in memory.

The adapters on the shelf were measured and do not do this: ``asgiref.wsgi.WsgiToAsgi`` buffers the
body but runs every request on one shared thread (``thread_sensitive``), and ``a2wsgi`` starts the
WSGI app at once and lets it read the body from its thread. This module is the small part they miss:
buffer with a size cap and a time budget, then call the app in a pool and send its answer.

Answers given here, before the app runs (413 over the size limit, 408 body too slow) are JSON with
the app's security headers, like every answer of the app.
"""

from __future__ import annotations

import asyncio
import io
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from .compute_gate import ComputeGate

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: A whole request body must arrive within this many seconds (5 MB at ~1 Mbit/s fits; a trickle
#: of a byte per second does not). Headers have their own deadline in the server's protocol.
BODY_TIMEOUT_SECONDS = 60.0
SERVER_NAME = b"cds-service"  # no software or version in responses


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class WsgiBridge:
    """ASGI application wrapping a WSGI app: buffers the request in the loop, runs the app in a pool."""

    def __init__(
        self,
        wsgi_app: WsgiApp,
        *,
        threads: int,
        max_body_bytes: int,
        headers: dict[str, str],
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        on_shutdown: Callable[[], None] | None = None,
        gate: ComputeGate | None = None,
        gated_prefix: str = "/cds-services/",
    ):
        self._app = wsgi_app
        self._gate = gate
        self._gated_prefix = gated_prefix
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout
        self._error_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            await send({"type": "websocket.close", "code": 1003})
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max_body:
            await self._error(send, 413, "request-entity-too-large",
                              f"request body exceeds the limit of {self._max_body} bytes")
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), timeout=self._body_timeout)
        except _TooLarge:
            await self._error(send, 413, "request-entity-too-large",
                              f"request body exceeds the limit of {self._max_body} bytes")
            return
        except TimeoutError:
            await self._error(send, 408, "request-timeout",
                              f"request body did not arrive within {self._body_timeout:.0f} seconds")
            return
        except _Disconnected:
            return
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        status, headers, payload = await loop.run_in_executor(self._pool, self._call_app, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _call_app(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the WSGI app to completion in a pool thread; hook calls take turns (compute_gate.py)."""
        if self._gate is not None and environ["PATH_INFO"].startswith(self._gated_prefix):
            with self._gate.turn():
                return self._run_app(environ)
        return self._run_app(environ)

    def _run_app(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The WSGI call itself; our answers are small, so buffer them."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return lambda _data: None  # the legacy write() callable; Flask never uses it

        result = self._app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        encoded.append((b"server", SERVER_NAME))
        return int(status.split(" ", 1)[0]), encoded, payload

    async def _error(self, send: Send, status: int, error: str, message: str) -> None:
        body = orjson.dumps({"error": error, "message": message})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", uuid.uuid4().hex.encode()),
            (b"cache-control", b"no-store"),
            (b"vary", b"Origin"),
            (b"connection", b"close"),
            (b"server", SERVER_NAME),
            *self._error_headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._pool.shutdown(wait=True)
                if self._on_shutdown is not None:
                    self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) for a complete request; the body is in memory, its length known."""
    path = scope["path"].encode("utf-8").decode("latin-1")
    root = scope.get("root_path", "").encode("utf-8").decode("latin-1")
    if root and path.startswith(root):
        path = path[len(root):]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root,
        "PATH_INFO": path,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": (scope.get("client") or ("", 0))[0],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        if b"_" in raw_name:
            continue  # X_Forwarded_For would pass for X-Forwarded-For in the environ: dropped, as nginx does
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name in {"CONTENT_LENGTH", "TRANSFER_ENCODING"}:
            continue  # the body is de-chunked and complete: its length is set below
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        key = f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if body or scope["method"] in {"POST", "PUT", "PATCH"}:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ
