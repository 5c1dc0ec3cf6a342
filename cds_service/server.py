"""Production server: gunicorn with the app factory, tuned for a synchronous EHR caller."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from .settings import Settings


class _Server(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            # Threads let a worker keep computing while another request waits on the FHIR server.
            "worker_class": "gthread",
            "threads": self.settings.threads,
            "timeout": int(self.settings.deadline_seconds) + 22,
            "graceful_timeout": 20,
            # Behind a load balancer: the balancer must close idle keep-alive connections before this
            # (deploy/nginx: keepalive_timeout 4s), or it may send a request on a closing socket.
            "keepalive": 5,
            "limit_request_line": 8190,
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
        from .app import create_app

        return create_app(self.settings)


def _freeze_startup_objects(_worker: Any) -> None:
    """Move the ~120 000 start-up objects (models, schemas, value sets, templates) out of the garbage
    collector's view: a full collection over them costs ~45 ms and would land on one unlucky request."""
    import gc

    gc.collect()
    gc.freeze()


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
