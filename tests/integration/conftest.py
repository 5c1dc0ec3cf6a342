"""Integration fixtures: real FHIR R4 servers for the tests in tests/integration.

By default every test that takes `fhir_server` runs once per sandbox server (sekmet-fhir and
Medplum's router), each started ONCE per session by cds_service.tooling.sandbox (installed first when
missing: about 30 s the first time) and loaded with tests/integration/data/*.json.

Environment:
  CDS_TEST_FHIR_SERVER   base URL of another FHIR R4 server: the suite runs against it alone
                         (nothing is started; the test data is PUT into it, ids prefixed sbx-)
  CDS_TEST_FHIR_TOKEN    bearer token for that server (tests marked `needs_token` are deselected without one)
  CDS_TEST_SANDBOX_SERVERS  comma list to run a subset of the sandbox servers, e.g. "medplum"
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CheckedClient  # tests/conftest.py (pytest puts tests/ on sys.path)

from cds_service.tooling.sandbox import SERVERS, SandboxServer, bundle_files

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
REPO = HERE.parent.parent
FIXTURE_PATIENTS = REPO / "fixtures" / "patients"
HTTP_TIMEOUT = (3, 20)  # (connect, read) seconds: every HTTP call of these tests is bounded
MAX_PAGES = 50
STRICT = {"Prefer": "handling=strict"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs against real FHIR servers (tests/integration)")
    config.addinivalue_line("markers", "servers(*names): only for these FHIR targets (sekmet, medplum, external)")
    config.addinivalue_line("markers", "managed_only: checks our sandbox servers' own behaviour, not an external one")
    config.addinivalue_line("markers", "needs_token: needs the target's bearer token (external servers may have none)")


def _applies(item: pytest.Item) -> bool:
    """Whether a test applies to the FHIR target it was parametrised with. Tests that do not apply
    are deselected at collection (never run, never reported as skipped)."""
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("fhir_server") if callspec else None
    if target is None:
        return True
    servers = item.get_closest_marker("servers")
    if servers and target not in servers.args:
        return False
    if item.get_closest_marker("managed_only") and target == "external":
        return False
    if item.get_closest_marker("needs_token") and target == "external" and not os.environ.get("CDS_TEST_FHIR_TOKEN"):
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, deselected = [], []
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
            if not _applies(item):
                deselected.append(item)
                continue
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def target_names() -> list[str]:
    if os.environ.get("CDS_TEST_FHIR_SERVER"):
        return ["external"]
    wanted = os.environ.get("CDS_TEST_SANDBOX_SERVERS")
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = sorted(set(names) - set(SERVERS))
        if unknown:
            raise pytest.UsageError(f"CDS_TEST_SANDBOX_SERVERS: unknown server(s) {unknown}; known: {SERVERS}")
        return names
    return list(SERVERS)


@dataclass
class FhirTarget:
    """A FHIR server under test: one of ours (`sandbox` set) or an external one."""

    name: str
    base_url: str
    token: str | None
    sandbox: SandboxServer | None = None
    timings: dict[str, float] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def managed(self) -> bool:
        return self.sandbox is not None

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, token: str | None | bool = True, **kwargs: Any) -> requests.Response:
        """token=True sends the server's token, a string sends that string, None/False sends none."""
        headers = {"Accept": "application/fhir+json", **kwargs.pop("headers", {})}
        bearer = self.token if token is True else token or None
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.request(method, self.url(path), headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def search(self, path: str, strict: bool = True) -> dict[str, Any]:
        response = self.get(path, headers=STRICT if strict else {})
        assert response.status_code == 200, f"{self.name}: GET {path} -> {response.status_code} {response.text[:500]}"
        bundle = response.json()
        assert bundle.get("resourceType") == "Bundle" and bundle.get("type") == "searchset", bundle
        return bundle

    def search_all(self, path: str, strict: bool = True) -> list[dict[str, Any]]:
        """Every match, following `next` links (at most MAX_PAGES pages)."""
        found: list[dict[str, Any]] = []
        url: str | None = path
        for _ in range(MAX_PAGES):
            bundle = self.search(url, strict=strict)
            found += matches(bundle)
            url = next_link(bundle)
            if not url:
                return found
        raise AssertionError(f"{self.name}: more than {MAX_PAGES} pages for {path}")


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The match entries' resources (not includes, not OperationOutcomes)."""
    return [
        e["resource"]
        for e in bundle.get("entry") or []
        if e.get("search", {}).get("mode", "match") == "match"
        and e.get("resource", {}).get("resourceType")
        and e["resource"]["resourceType"] != "OperationOutcome"
    ]


def ids(bundle: dict[str, Any]) -> list[str]:
    return [r["id"] for r in matches(bundle)]


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), None)


def data_bundles() -> list[Path]:
    return bundle_files(DATA_DIR)


@pytest.fixture(scope="session", params=target_names())
def fhir_server(request: pytest.FixtureRequest) -> Iterator[FhirTarget]:
    """A running FHIR server with tests/integration/data loaded; started once per session."""
    name = request.param
    if name == "external":
        target = FhirTarget(
            "external",
            os.environ["CDS_TEST_FHIR_SERVER"].rstrip("/"),
            os.environ.get("CDS_TEST_FHIR_TOKEN") or None,
        )
        for path in data_bundles():
            response = target.request(
                "POST",
                target.base_url,
                data=path.read_bytes(),
                headers={"Content-Type": "application/fhir+json"},
                timeout=(3, 120),
            )
            assert response.status_code == 200, f"loading {path.name}: {response.status_code} {response.text[:500]}"
        yield target
        target.session.close()
        return
    server = SandboxServer(name, out=sys.stderr)
    started = time.monotonic()
    with server:
        target = FhirTarget(name, server.base_url, server.token, sandbox=server)
        target.timings["start"] = time.monotonic() - started
        report = server.load(data_bundles(), progress=False)
        target.timings["load test data"] = report.seconds
        _TIMINGS[name] = target.timings
        yield target
        target.session.close()


_TIMINGS: dict[str, dict[str, float]] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TIMINGS:
        parts = [
            f"{name}: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
            for name, timings in _TIMINGS.items()
        ]
        terminalreporter.write_line("sandbox FHIR servers: " + "; ".join(parts))


# ---------------------------------------------------------------------- the service against them


@dataclass
class FixtureSet:
    """The fixture patients, shifted to `day` and loaded into the session's FHIR server."""

    day: Any
    manifest: Any
    loaded: dict[str, Any]  # slug -> cds_service.tooling.fixtures.LoadedFixture
    seconds: float = 0.0


def fixture_slugs() -> list[str]:
    """Slugs of fixtures/manifest.yaml (empty when the fixtures are not there)."""
    if not (REPO / "fixtures" / "manifest.yaml").is_file():
        return []
    from cds_service.tooling.fixtures import load_manifest

    return [spec.slug for spec in load_manifest(REPO / "fixtures").fixtures]


@pytest.fixture(scope="session")
def loaded_fixtures(fhir_server: FhirTarget) -> FixtureSet:
    """Every fixture patient, dates shifted to today (UTC, the service's clock), in the FHIR server."""
    from datetime import UTC, datetime

    from cds_service.tooling.fixtures import load_manifest

    assert fixture_slugs(), "fixtures/manifest.yaml is missing"
    day = datetime.now(UTC).date()
    manifest = load_manifest(REPO / "fixtures")
    loaded = {spec.slug: spec.load(day) for spec in manifest.fixtures}
    started = time.monotonic()
    if fhir_server.sandbox is not None:
        fhir_server.sandbox.load([f.bundle for f in loaded.values()], progress=False)
    else:
        for slug, fixture in loaded.items():
            response = fhir_server.request(
                "POST",
                fhir_server.base_url,
                json=fixture.bundle,
                timeout=(3, 120),
                headers={"Content-Type": "application/fhir+json"},
            )
            assert response.status_code == 200, f"loading {slug}: {response.status_code} {response.text[:500]}"
    seconds = time.monotonic() - started
    fhir_server.timings["load fixtures"] = seconds
    return FixtureSet(day, manifest, loaded, seconds)


@pytest.fixture(scope="session")
def make_cds_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Build the Flask app with settings overrides (development, no client auth); closed at the end."""
    from cds_service.app import create_app
    from cds_service.settings import Settings

    apps: list[Any] = []

    def build(**overrides: Any) -> Any:
        values: dict[str, Any] = {
            "environment": "development",
            "data_dir": tmp_path_factory.mktemp("cds"),
            "auth_mode": "off",
            "log_level": "WARNING",
            "console_enabled": False,
        }
        values.update(overrides)
        app = create_app(Settings(**values).validate())
        app.test_client_class = CheckedClient  # every 200 hook answer is validated against the response schema
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["cds"].fhir.close()


@pytest.fixture(scope="session")
def cds_app(make_cds_app: Any) -> Any:
    return make_cds_app()


def discovery(client: Any) -> dict[str, dict[str, Any]]:
    """hook -> discovery entry (id, prefetch templates)."""
    response = client.get("/cds-services")
    assert response.status_code == 200
    return {service["hook"]: service for service in response.get_json()["services"]}


def hooks_for(spec: Any) -> list[str]:
    return ["patient-view", "order-select", "order-sign"] if spec.orders else ["patient-view"]


def no_prefetch_request(fixture: Any, hook: str, service: dict[str, Any], base_url: str, token: str | None) -> dict:
    """The fixture's request with no prefetch: fhirServer + fhirAuthorization carrying *token*."""
    from cds_service.tooling.fixtures import build_request

    request = build_request(fixture, hook, service["prefetch"], with_prefetch=False, fhir_server=base_url)
    if token:
        request["fhirAuthorization"]["access_token"] = token
    else:
        del request["fhirAuthorization"]
    return request


def topics(body: Any) -> list[str]:
    cards = body.get("cards", []) if isinstance(body, dict) else []
    return sorted(str(card.get("source", {}).get("topic", {}).get("code", "?")) for card in cards)


def comparable_cards(body: dict[str, Any]) -> list[Any]:
    """The cards without what differs between two identical calls: uuids, and the id and
    authoredOn of the resources that suggestions would create (minted per call)."""

    def strip(node: Any, parent: str = "") -> Any:
        if isinstance(node, dict):
            drop = {"uuid"} | ({"id", "authoredOn"} if parent == "resource" else set())
            return {k: strip(v, k) for k, v in node.items() if k not in drop}
        if isinstance(node, list):
            return [strip(v, parent) for v in node]
        return node

    return sorted((strip(card) for card in body.get("cards", [])), key=lambda c: repr(c))
