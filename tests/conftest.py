"""Shared test fixtures: an app per test on a temporary SQLite database, a client that checks every
CDS Hooks response against the response schema, and a real PostgreSQL database when available."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.protocol import response_errors
from cds_service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class CheckedClient(FlaskClient):
    """Every 200 answer of a hook invocation must be a valid CDS Hooks 2.0 response."""

    def open(self, *args, **kwargs):  # type: ignore[override]
        response = super().open(*args, **kwargs)
        path = args[0] if args and isinstance(args[0], str) else kwargs.get("path", "")
        method = kwargs.get("method", "GET")
        if (
            method == "POST"
            and path.startswith("/cds-services/")
            and not path.endswith("/feedback")
            and response.status_code == 200
        ):
            problems = response_errors(response.get_json())
            assert not problems, f"invalid CDS Hooks response: {problems}"
        if response.status_code >= 400 and path.startswith("/cds-services") and response.mimetype == "application/json":
            body = response.get_json()
            assert isinstance(body, dict) and body.get("error") and body.get("message"), body
        return response


def make_settings(tmp_path: Path, **overrides) -> Settings:
    base = {
        "environment": "development",
        "data_dir": tmp_path,
        "auth_mode": "off",
        "fhir_timeout_seconds": 2.0,
        "deadline_seconds": 4.0,
        "auto_migrate": True,  # every test database starts empty
    }
    base.update(overrides)
    return Settings(**base).validate()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def app(settings: Settings):
    application = create_app(settings)
    application.test_client_class = CheckedClient
    yield application
    application.extensions["cds"].fhir.close()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_app(tmp_path: Path):
    """Build an app with settings overrides; closes its FHIR client afterwards."""
    apps = []

    def build(**overrides):
        application = create_app(make_settings(tmp_path, **overrides))
        application.test_client_class = CheckedClient
        apps.append(application)
        return application

    yield build
    for application in apps:
        application.extensions["cds"].fhir.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (CI and developer machines run one)."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"cds_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # a missing server must fail loudly, not skip
        pytest.fail(f"PostgreSQL is required for these tests ({PG_ADMIN_URL}): {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# ---- test tiers ------------------------------------------------------------------------------
# `make test-fast` deselects what needs more than Python and SQLite; `make test` runs everything.
_TIER_BY_DIRECTORY = {"cluster": "cluster", "integration": "sandbox", "smart": "browser"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag each test with the real components it needs, from its location and fixtures."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        tier = _TIER_BY_DIRECTORY.get(parts[0]) if len(parts) > 1 else None
        if tier:
            item.add_marker(tier)
        names = set(getattr(item, "fixturenames", ()))
        if "browser" in names:
            item.add_marker("browser")
        callspec = getattr(item, "callspec", None)
        params = set(map(str, callspec.params.values())) if callspec else set()
        if "postgres_url" in names or "postgresql" in params:
            item.add_marker("postgres")
