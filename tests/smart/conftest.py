"""Fixtures for the assessment app: a real sandbox FHIR server behind the EHR launch harness, and the
service on a real HTTP port (hooks are called over HTTP, as an EHR calls them).

Per sandbox server (sekmet, Medplum; `CDS_TEST_SANDBOX_SERVERS` picks a subset) the server starts
once per module, the fixture patients the tests use are loaded with their dates shifted to today,
and `cds_service.tooling.ehr_launch.EhrLaunchServer` stands in front of it as the EHR.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from security.fhir_recorder import fhir_recorder  # noqa: F401  (a fixture: a recording local FHIR server)
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service.app import create_app
from cds_service.settings import Settings
from cds_service.tooling.ehr_launch import EhrLaunchServer
from cds_service.tooling.fixtures import LoadedFixture, build_request, load_manifest
from cds_service.tooling.sandbox import SERVERS, SandboxServer

REPO = Path(__file__).resolve().parents[2]
HTTP_TIMEOUT = (3, 30)
# fixture patients the tests launch the app for (their dates shifted to today)
AXSPA_SLUG = "axspa-onset-age-35"  # 3 NICE criteria met, NSAID response not documented -> axspa-hla-b27
RED_FLAG_SLUG = "red-flag-malignancy-history"  # red-flag card, saddle anaesthesia not documented
SLUGS = (AXSPA_SLUG, RED_FLAG_SLUG)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: end-to-end test in a real headless Chromium")
    config.addinivalue_line("markers", "integration: runs against real FHIR servers")


def server_names() -> list[str]:
    wanted = os.environ.get("CDS_TEST_SANDBOX_SERVERS")
    return [n.strip() for n in wanted.split(",") if n.strip()] if wanted else list(SERVERS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """The CDS service (hooks and /smart/) on 127.0.0.1 over real HTTP."""

    app: Flask
    url: str
    server: BaseWSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()
        self.app.extensions["cds"].fhir.close()
        self.app.extensions["cds"].store.engine.dispose()

    def discovery(self) -> dict[str, dict[str, Any]]:
        body = requests.get(f"{self.url}/cds-services", timeout=HTTP_TIMEOUT).json()
        return {s["hook"]: s for s in body["services"]}


def start_service(data_dir: Path, **env: str) -> Service:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    environ = {
        "CDS_ENV": "development",
        "CDS_DATA_DIR": str(data_dir),
        "CDS_LOG_LEVEL": "WARNING",
        "CDS_AUTH_MODE": "off",
        "CDS_PUBLIC_BASE_URL": url,
        **env,
    }
    # development: the /smart/ cookies are sealed with a secret made in the data directory
    app = create_app(Settings.from_env(environ))
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=f"smart-service-{port}", daemon=True)
    thread.start()
    return Service(app, url, server, thread)


@dataclass
class Ehr:
    """A sandbox FHIR server, the EHR launch harness in front of it, and the loaded fixture patients."""

    name: str
    fhir: SandboxServer
    harness: EhrLaunchServer
    patients: dict[str, LoadedFixture]

    def question_responses(self, patient_id: str) -> list[dict[str, Any]]:
        """Every QuestionnaireResponse of the patient, read from the FHIR server itself."""
        response = self.fhir.request("GET", f"QuestionnaireResponse?patient={patient_id}&_count=100")
        assert response.status_code == 200, response.text[:300]
        return [
            e["resource"]
            for e in response.json().get("entry") or []
            if e.get("search", {}).get("mode") != "outcome"
            and e.get("resource", {}).get("resourceType") == "QuestionnaireResponse"
        ]


@pytest.fixture(scope="module", params=server_names())
def ehr(request: pytest.FixtureRequest) -> Iterator[Ehr]:
    manifest = load_manifest(REPO / "fixtures")
    day = datetime.now(UTC).date()
    patients = {slug: manifest.get(slug).load(day) for slug in SLUGS}
    with SandboxServer(request.param, out=sys.stderr) as fhir:
        fhir.load([p.bundle for p in patients.values()], progress=False)
        with EhrLaunchServer(fhir.base_url, fhir.token) as harness:
            yield Ehr(request.param, fhir, harness, patients)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    live = start_service(tmp_path_factory.mktemp("smart-service"))
    yield live
    live.stop()


def patient_view(service: Service, ehr: Ehr, slug: str) -> dict[str, Any]:
    """patient-view over HTTP with no prefetch: the service reads the record through the EHR."""
    fixture = ehr.patients[slug]
    body = build_request(
        fixture,
        "patient-view",
        service.discovery()["patient-view"]["prefetch"],
        with_prefetch=False,
        fhir_server=ehr.harness.iss,
    )
    body["fhirAuthorization"]["access_token"] = ehr.fhir.token
    response = requests.post(
        f"{service.url}/cds-services/{service.discovery()['patient-view']['id']}", json=body, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 200, response.text[:500]
    return response.json()


def topics(body: dict[str, Any]) -> list[str]:
    return sorted(card["source"]["topic"]["code"] for card in body.get("cards", []))


def smart_link(body: dict[str, Any], topic: str) -> dict[str, Any]:
    card = next(c for c in body["cards"] if c["source"]["topic"]["code"] == topic)
    links = [link for link in card.get("links", []) if link.get("type") == "smart"]
    assert len(links) == 1, card.get("links")
    return links[0]


def ehr_launch_url(ehr: Ehr, link: dict[str, Any], patient_id: str) -> str:
    """What the CDS Hooks sandbox does with a smart link: register the launch context, open the app."""
    response = requests.post(
        f"{ehr.harness.iss}/_services/smart/Launch",
        json={"launchUrl": link["url"], "parameters": {"patient": patient_id, "appContext": link.get("appContext")}},
        headers={"Authorization": f"Bearer {ehr.fhir.token}"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    launch_id = response.json()["launch_id"]
    return f"{link['url']}?{requests.compat.urlencode({'launch': launch_id, 'iss': ehr.harness.iss})}"


def asked_link_ids(link: dict[str, Any]) -> list[str]:
    return json.loads(link["appContext"])["linkIds"]
