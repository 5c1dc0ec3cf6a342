"""The console as the EHR for the assessment app: a card's `smart` link can be followed from the preview.

`POST /console/api/smart-launch` (routes.py) puts the previewed patient (fixture or pasted Bundle, synthetic data
only) into a small in-memory FHIR server, registers the launch with an EHR launch layer in front of
it (`cds_service.tooling.ehr_launch`, the same one the tests use) and answers the URL to open:
`<link url>?launch=<id>&iss=<that FHIR base>`. The app then runs its real SMART launch and writes its
QuestionnaireResponse there. Written resources are kept in `<data dir>/console-ehr/<patient>.jsonl`
(shared by every worker of the server) and added to the patient's data on the next preview, so the
card changes as it would in an EHR. Delete that directory to start again.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import current_app
from werkzeug import Request
from werkzeug import Response as WerkzeugResponse
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service.tooling.ehr_launch import HOST, EhrLaunchServer, _QuietHandler
from cds_service.tooling.fixtures import UnsupportedQuery, search

from .preview import CONSOLE_USER, ConsoleInputError, PatientSource

FHIR_JSON = "application/fhir+json"
WRITABLE = {"QuestionnaireResponse"}


class ConsoleEhr:
    """An in-memory FHIR server for previewed patients plus the EHR launch layer, started on first use."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "console-ehr"
        self.token = secrets.token_urlsafe(24)
        self.patients: dict[str, list[dict[str, Any]]] = {}
        self.harness: EhrLaunchServer | None = None
        self._server: BaseWSGIServer | None = None
        self._lock = threading.Lock()

    def start(self) -> EhrLaunchServer:
        with self._lock:
            if self.harness is None:
                self._server = make_server(HOST, 0, self.wsgi, threaded=True, request_handler=_QuietHandler)
                threading.Thread(target=self._server.serve_forever, name="console-ehr-fhir", daemon=True).start()
                base = f"http://{HOST}:{self._server.server_port}/fhir"
                self.harness = EhrLaunchServer(base, self.token).start()
            return self.harness

    def stop(self) -> None:
        if self.harness is not None:
            self.harness.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ data

    def _file(self, patient_id: str) -> Path:
        safe = "".join(c for c in patient_id if c.isalnum() or c in "-.")[:64] or "patient"
        return self.dir / f"{safe}.jsonl"

    def written(self, patient_id: str) -> list[dict[str, Any]]:
        """Resources the app wrote for this patient (every worker sees the same file)."""
        path = self._file(patient_id)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]

    def _write(self, patient_id: str, resource: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self._file(patient_id), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(resource) + "\n")

    def _resources(self) -> list[dict[str, Any]]:
        out = []
        for patient_id, resources in list(self.patients.items()):
            out += resources + self.written(patient_id)
        return out

    # ------------------------------------------------------------------ the in-memory FHIR server

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.headers.get("Authorization") != f"Bearer {self.token}" and not request.path.endswith("/metadata"):
            return _fhir({"resourceType": "OperationOutcome", "issue": [{"code": "login"}]}, 401)(
                environ, start_response
            )
        kind, _, ident = request.path.removeprefix("/fhir").strip("/").partition("/")
        if request.method == "POST" and kind in WRITABLE and not ident:
            response = self._create(kind, request)
        elif request.method == "GET" and ident:
            found = next((r for r in self._resources() if r.get("resourceType") == kind and r.get("id") == ident), None)
            response = _fhir(found) if found else _fhir({"resourceType": "OperationOutcome"}, 404)
        elif request.method == "GET" and kind:
            try:
                base = f"http://{request.host}/fhir"
                response = _fhir(search(self._resources(), f"{kind}?{request.query_string.decode()}", base_url=base))
            except UnsupportedQuery:
                response = _fhir({"resourceType": "OperationOutcome", "issue": [{"code": "not-supported"}]}, 400)
        else:
            response = _fhir({"resourceType": "OperationOutcome", "issue": [{"code": "not-supported"}]}, 405)
        return response(environ, start_response)

    def _create(self, kind: str, request: Request) -> WerkzeugResponse:
        body = request.get_json(silent=True, force=True)
        subject = ((body or {}).get("subject") or {}).get("reference", "") if isinstance(body, dict) else ""
        patient_id = subject.removeprefix("Patient/")
        if not isinstance(body, dict) or body.get("resourceType") != kind or patient_id not in self.patients:
            return _fhir({"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]}, 400)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        resource = {**body, "id": str(uuid.uuid4()), "meta": {"versionId": "1", "lastUpdated": now}}
        self._write(patient_id, resource)
        return _fhir(resource, 201)

    # ------------------------------------------------------------------ launching

    def launch(self, source: PatientSource, link: Any) -> str:
        """Register the launch for the previewed patient; the URL the browser opens (launch + iss)."""
        if not isinstance(link, dict) or not str(link.get("url", "")).startswith(("http://", "https://")):
            raise ConsoleInputError("link must be the card's smart link with an http(s) url", "link")
        harness = self.start()
        self.patients[source.patient_id] = list(source.resources)
        context = link.get("appContext") if isinstance(link.get("appContext"), str) else None
        launch_id = harness.new_launch(source.patient_id, context, CONSOLE_USER)
        separator = "&" if "?" in link["url"] else "?"
        return f"{link['url']}{separator}{urlencode({'launch': launch_id, 'iss': harness.iss})}"


def _fhir(body: Any, status: int = 200) -> WerkzeugResponse:
    return WerkzeugResponse(json.dumps(body), status=status, content_type=FHIR_JSON)


def console_ehr() -> ConsoleEhr:
    extensions = current_app.extensions.setdefault("cds_console", {})
    if "ehr" not in extensions:
        extensions["ehr"] = ConsoleEhr(Path(current_app.extensions["cds"].settings.data_dir))
    return extensions["ehr"]


def with_app_answers(source: PatientSource) -> PatientSource:
    """The patient's data plus what the assessment app wrote for them from this console."""
    written = console_ehr().written(source.patient_id)
    return replace(source, resources=[*source.resources, *written]) if written else source
