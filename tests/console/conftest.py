"""Console test fixtures: a live server in a thread, a real headless Chromium, analytics databases.

The browser is Debian's chromium driven through Debian's chromedriver (explicit paths: Selenium
must never download a browser or a driver). Every wait is an explicit wait with a timeout, so a
broken page fails in seconds, not hangs.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service.app import create_app
from cds_service.settings import Settings

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONSOLE_DATA = HERE / "data"
PROJECT_FIXTURES = REPO / "fixtures"
CHROMIUM = os.environ.get("CDS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CDS_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_SECONDS = 15
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: end-to-end test in a real headless Chromium")


# --------------------------------------------------------------------------------------------
# Live server
# --------------------------------------------------------------------------------------------


@dataclass
class LiveServer:
    app: Flask
    url: str
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def store(self) -> Any:
        return self.app.extensions["cds"].store


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_live_server(data_dir: Path, fixtures_dir: Path | None = None, **env: str) -> LiveServer:
    """The app as `make serve` configures it (CDS_ENV=development from the environment), served by
    a real threaded HTTP server on 127.0.0.1 and a free port."""
    environ = {"CDS_ENV": "development", "CDS_DATA_DIR": str(data_dir), "CDS_LOG_LEVEL": "WARNING", **env}
    app = create_app(Settings.from_env(environ))
    if fixtures_dir is not None:
        app.config["CDS_CONSOLE_FIXTURES_DIR"] = str(fixtures_dir)
    port = _free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=f"console-live-{port}", daemon=True)
    thread.start()
    return LiveServer(app=app, url=f"http://127.0.0.1:{port}", server=server, thread=thread)


def stop_live_server(live: LiveServer) -> None:
    live.server.shutdown()
    live.thread.join(timeout=10)
    live.server.server_close()
    rt = live.app.extensions["cds"]
    rt.fhir.close()
    rt.store.engine.dispose()
    review = live.app.extensions.get("cds_console", {}).get("review_app")
    if review is not None:
        review.extensions["cds"].fhir.close()
        review.extensions["cds"].store.engine.dispose()


def fixtures_dir_for_e2e() -> Path:
    """The project's fixtures once they exist (they do now); the console's own small set otherwise."""
    return PROJECT_FIXTURES if (PROJECT_FIXTURES / "manifest.yaml").exists() else CONSOLE_DATA


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("console-live"), fixtures_dir_for_e2e())
    yield live
    stop_live_server(live)


# --------------------------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------------------------


def chromium_available() -> str | None:
    """None when the browser and driver are installed, else why not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() and os.access(path, os.X_OK)):
            return f"{path} missing: `make test` installs chromium and chromium-driver (Debian)"
    return None


def new_browser(profile_dir: Path, width: int = 1440, height: int = 1000):
    """A fresh headless Chromium with its own profile, driven by Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    driver.set_script_timeout(WAIT_SECONDS)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = chromium_available()
    if reason:
        pytest.fail(reason)  # the suite installs it; a missing browser is an error, not a skip
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = new_browser(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Databases for the analytics tests
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A private schema in the session's PostgreSQL database (search_path set through the URL),
    so these tests see only their own rows whatever other tests store."""
    import sqlalchemy as sa

    schema = f"console_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'analytics.sqlite3'}"
    return request.getfixturevalue("pg_schema_url")
