"""Prefetch resolution exactly as CDS Hooks 2.0 specifies it.

For each template key: absent or an OperationOutcome → the service fetches it itself; `null` or an
empty Bundle → the EHR has no such data; a paged Bundle → remaining pages are fetched. What cannot
be had ends in 412 (default) or, when the site allows it, in cards labelled as computed from
partial data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .fhir_client import FhirClient, next_link
from .protocol import RequestError
from .urls import url_allowed

_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def render_template(template: str, context: dict[str, Any]) -> str | None:
    """Fill a prefetch template; None when a token has no value in this context."""
    missing = False

    def replace(match: re.Match[str]) -> str:
        nonlocal missing
        token = match.group(1)
        value: Any = None
        if token.startswith("context."):
            value = context.get(token.removeprefix("context."))
        elif token in _USER_TOKENS:
            user = context.get("userId", "")
            kind, _, ident = user.partition("/")
            value = ident if kind == _USER_TOKENS[token] else None
        if not isinstance(value, str | int) or value == "":
            missing = True
            return ""
        return quote(str(value), safe="")

    rendered = _TOKEN.sub(replace, template)
    return None if missing else rendered


@dataclass
class MissingKey:
    key: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason}


@dataclass
class ResolvedData:
    """Resources per prefetch key (None = the EHR says there is no such data)."""

    by_key: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    missing: list[MissingKey] = field(default_factory=list)
    fetched_keys: list[str] = field(default_factory=list)
    truncated_keys: list[str] = field(default_factory=list)

    def patient(self) -> dict[str, Any] | None:
        for resource in self.by_key.get("patient", []):
            if resource.get("resourceType") == "Patient":
                return resource
        return None

    def all_resources(self) -> list[dict[str, Any]]:
        """Every resource once (deduplicated by type/id), the Patient excluded."""
        seen: set[tuple[str, str]] = set()
        out: list[dict[str, Any]] = []
        for resources in self.by_key.values():
            for resource in resources:
                kind = resource.get("resourceType")
                if kind == "Patient":
                    continue
                ident = resource.get("id")
                if isinstance(ident, str):
                    marker = (str(kind), ident)
                    if marker in seen:
                        continue
                    seen.add(marker)
                out.append(resource)
        return out


def _bundle_resources(bundle: dict[str, Any], field_path: str) -> list[dict[str, Any]]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise RequestError(400, f"{field_path}.entry must be an array", f"{field_path}.entry")
    resources: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None and isinstance(entry, dict) and "resource" not in entry:
            continue  # e.g. a search entry without a resource (mode outcome) carries no data
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            field = f"{field_path}.entry[{index}].resource"
            raise RequestError(400, f"{field} must be a FHIR resource with a resourceType", field)
        if resource["resourceType"] != "OperationOutcome":
            resources.append(resource)
    return resources


def resolve(
    templates: dict[str, str],
    body: dict[str, Any],
    client: FhirClient,
    allowlist: tuple[str, ...],
    deadline: float,
    allow_open_servers: bool,
    follow_paging: dict[str, bool] | None = None,
) -> ResolvedData:
    """Combine the request's prefetch with FHIR fetches for whatever is absent or failed."""
    context = body["context"]
    prefetch = body.get("prefetch") or {}
    resolved = ResolvedData()
    to_fetch: dict[str, str] = {}
    continue_paging: dict[str, str] = {}
    for key, template in templates.items():
        query = render_template(template, context)
        if query is None:
            resolved.by_key[key] = []  # the template does not apply to this context (e.g. no encounter)
            continue
        if key not in prefetch:
            to_fetch[key] = query
            continue
        value = prefetch[key]
        field_path = f"$.prefetch.{key}"
        if value is None:
            resolved.by_key[key] = []
            continue
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise RequestError(400, f"{field_path} must be a FHIR resource, a Bundle or null", field_path)
        kind = value["resourceType"]
        if kind == "OperationOutcome":
            to_fetch[key] = query
        elif kind == "Bundle":
            resolved.by_key[key] = _bundle_resources(value, field_path)
            link = next_link(value)
            if link and (follow_paging or {}).get(key, True):
                continue_paging[key] = link
        else:
            resolved.by_key[key] = [value]
    patient = resolved.patient()
    if patient is not None and patient.get("id") not in (None, context.get("patientId")):
        raise RequestError(400, "$.prefetch.patient is not the patient in $.context.patientId", "$.prefetch.patient")

    if not to_fetch and not continue_paging:
        return resolved
    server = body.get("fhirServer")
    auth = body.get("fhirAuthorization")
    reason = None
    if not server:
        reason = "not in prefetch and no fhirServer was sent"
    elif not auth and not allow_open_servers:
        reason = "not in prefetch and no fhirAuthorization was sent (open FHIR servers are not called)"
    elif not url_allowed(server, allowlist):
        reason = "not in prefetch and fhirServer is not on this service's FHIR server allowlist"
    if reason:
        resolved.missing.extend(MissingKey(key, reason) for key in [*to_fetch, *continue_paging])
        return resolved

    token = auth.get("access_token") if auth else None
    queries = {**to_fetch, **continue_paging}
    results = client.fetch_all(server, token, _relative(queries, server), deadline, allowlist, follow_paging)
    for key, result in results.items():
        if not result.ok:
            resolved.missing.append(MissingKey(key, result.reason or "fetch failed"))
            continue
        resolved.by_key.setdefault(key, []).extend(result.resources)
        resolved.fetched_keys.append(key)
        if result.truncated:
            # what was read is kept (partial mode uses it) but the key counts as not obtained: a search
            # that pages on past the cap is either broken or too large to judge "nothing relevant" from
            resolved.truncated_keys.append(key)
            resolved.missing.append(MissingKey(key, f"stopped after {result.pages} pages: the search did not end"))
    return resolved


def _relative(queries: dict[str, str], server: str) -> dict[str, str]:
    """Absolute next links on the same server become relative; others stay absolute (and are re-checked)."""
    base = server.rstrip("/") + "/"
    out = {}
    for key, query in queries.items():
        out[key] = query[len(base):] if query.startswith(base) else query
    return out
