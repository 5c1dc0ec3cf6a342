"""Production server: gunicorn's asyncio worker in front of the Flask app, tuned for a synchronous EHR caller.

Serving model (issue 15, slow clients; docs/security.md "Serving model"): gunicorn's ``asgi``
worker reads every request in its event loop, under a header deadline and a body time budget, and
hands only complete requests to a pool of ``CDS_THREADS`` threads that run the Flask app
(:mod:`cds_service.asgi_bridge`). Measured with 200 clients trickling one byte per second: ``gthread``
(threads read requests) answered nothing for as long as they kept going; this model answers
``/healthz`` and hook calls as if they were not there.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from gunicorn.app.base import BaseApplication
from gunicorn.asgi import protocol as asgi_protocol
from gunicorn.workers import gasgi

from .auth import MAX_TOKEN_CHARS
from .settings import Settings

#: A client must finish its request line and headers within this many seconds of connecting (or of
#: the previous response on a kept-alive connection); a slow-header client is answered 408 and dropped.
HEADER_TIMEOUT_SECONDS = 10.0
#: One header line may carry "Authorization: Bearer <token>" with the largest token the app accepts,
#: so an oversized token meets the app's JSON 401 rather than the server's limit; longer lines get
#: the JSON 431 below.
HEADER_FIELD_LIMIT = MAX_TOKEN_CHARS + 64
#: Fixed, safe messages for the errors the server answers itself (the parser's own text can quote
#: the request). Every one is JSON with the app's security headers.
_SERVER_ERRORS = {
    400: ("bad-request", "malformed HTTP request"),
    408: ("request-timeout", f"request headers did not arrive within {HEADER_TIMEOUT_SECONDS:.0f} seconds"),
    414: ("uri-too-long", "request line exceeds 8190 bytes"),
    431: ("request-header-fields-too-large",
          f"a header line exceeds {HEADER_FIELD_LIMIT} bytes, or there are more than 100 header fields"),
    501: ("not-implemented", "unsupported transfer coding"),
    500: ("internal-error", "unexpected error"),
}


class _Protocol(asgi_protocol.ASGIProtocol):
    """gunicorn's HTTP/1 protocol with a header deadline and JSON answers for its own errors."""

    _header_deadline: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.worker.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _on_headers_complete(self) -> Any:
        self._cancel_header_deadline()
        return super()._on_headers_complete()

    def _arm_keepalive_timer(self) -> None:
        super()._arm_keepalive_timer()
        self._arm_header_deadline()  # the next request on this connection gets its own deadline

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self._closed:
            self._send_error_response(408, "")
            self._close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        from .app import API_CSP, SECURITY_HEADERS

        error, text = _SERVER_ERRORS.get(status, ("bad-request" if status < 500 else "internal-error",
                                                   HTTPStatus(status).phrase))
        body = orjson.dumps({"error": error, "message": text})
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": API_CSP, "Cache-Control": "no-store",
                   **dict(extra_headers)}
        reason = HTTPStatus(status).phrase
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                + "Connection: close\r\n\r\n")
        self._safe_write(head.encode("latin-1"))
        self._safe_write(body)


class _FairAcceptLoop(asyncio.SelectorEventLoop):
    """An event loop that accepts one waiting connection per readiness event of the listening socket.

    Why (issue 16, measured): asyncio accepts up to 100 waiting connections each time the shared
    listening socket is readable, so when clients connect at once the worker that wakes first takes
    them all and keeps them for as long as they stay alive: 8 keep-alive connections on one worker
    left the other core idle (W1/W2 at 8 connections: 253–275 req/s; 380–535 with this loop). Taking
    one at a time, an idle worker, whose loop is not waiting for the interpreter lock, tends to win the
    next connection. Best effort: when every worker is idle and a burst arrives, the first awake can
    still take several before another wakes (docs/benchmarks.md, the repeated body).
    """

    def _accept_connection(self, protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                           backlog: int = 100, *args: Any) -> None:
        super()._accept_connection(protocol_factory, sock, sslcontext, server, 1, *args)  # type: ignore[misc]


class Worker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker serving connections with :class:`_Protocol`."""

    def _setup_event_loop(self) -> None:
        self.loop = _FairAcceptLoop()
        asyncio.set_event_loop(self.loop)

    def init_process(self) -> None:
        # gasgi builds each connection's protocol from its module-level name; this worker process
        # (and only it) uses the subclass.
        gasgi.ASGIProtocol = _Protocol  # type: ignore[misc]
        super().init_process()


class _Server(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            # The event loop reads requests; CDS_THREADS threads per worker run the app (WsgiBridge),
            # so one request can compute while another waits on the FHIR server.
            "worker_class": "cds_service.server.Worker",
            "worker_connections": 1000,
            "asgi_lifespan": "on",
            "timeout": int(self.settings.deadline_seconds) + 22,
            "graceful_timeout": 20,
            # Behind a load balancer: the balancer must close idle keep-alive connections before this
            # (deploy/nginx: keepalive_timeout 4s), or it may send a request on a closing socket.
            "keepalive": 5,
            "limit_request_line": 8190,
            "limit_request_field_size": HEADER_FIELD_LIMIT,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "preload_app": False,
        }
        # Worker heartbeat files on tmpfs: a slow or full disk must not get healthy workers killed.
        if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
            options["worker_tmp_dir"] = "/dev/shm"
        for key, value in options.items():
            self.cfg.set(key, value)
        self.cfg.set("child_exit", _child_exit)
        self.cfg.set("post_worker_init", _freeze_startup_objects)

    def load(self):
        from .app import API_CSP, SECURITY_HEADERS, create_app
        from .asgi_bridge import WsgiBridge
        from .compute_gate import GATE

        app = create_app(self.settings)
        GATE.wait_limit = self.settings.gate_wait_ms / 1000
        return WsgiBridge(
            app,
            threads=self.settings.threads,
            max_body_bytes=self.settings.max_request_bytes,
            headers={**SECURITY_HEADERS, "Content-Security-Policy": API_CSP},
            on_shutdown=app.extensions["cds"].close,  # Runtime.close at the worker's lifespan shutdown
            gate=GATE if self.settings.gate_wait_ms > 0 else None,
        )


def _freeze_startup_objects(_worker: Any) -> None:
    """Move the ~120 000 start-up objects (models, schemas, value sets, templates) out of the garbage
    collector's view: a full collection over them costs ~45 ms and would land on one unlucky request.
    Then set the collector's thresholds for large request bodies (collector.py; it is never paused)."""
    import gc

    from .collector import tune_collector

    gc.collect()
    gc.freeze()
    tune_collector()


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _prepare_metrics_dir() -> None:
    """Workers share metrics through files; a fresh directory per server start (stale files lie)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cds-metrics-")


def run_gunicorn(settings: Settings) -> int:
    _prepare_metrics_dir()
    # No server software or version in responses: gunicorn reads SERVER when building each response.
    import gunicorn.http.wsgi as gunicorn_wsgi

    gunicorn_wsgi.SERVER = "cds-service"
    _Server(settings).run()
    return 0
