"""Prefetch resolution exactly as CDS Hooks 2.0 specifies it.

For each template key: absent or an OperationOutcome → the service fetches it itself; `null` or an
empty Bundle → the EHR has no such data; a paged Bundle → remaining pages are fetched. What cannot
be had ends in 412 (default) or, when the site allows it, in cards labelled as computed from
partial data.

Keys with a time window (`windows`: key -> days; the temperatures of the fever red flag) must cover
it whole: a "latest N" answer that stops short of the window start is completed with a
date-bounded search when a FHIR server may be called (see prefetch_window); otherwise what is known
is said in `ResolvedData.complete_since` and the clinical rule treats the uncovered days as not
documented.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .fhir_client import FhirClient, next_link
from .prefetch_window import BundleInfo, complete_since, is_cut_off, merge, window_query, window_start
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
    # per windowed key: None = its readings cover the whole window; else the instant from which they
    # are known complete (the oldest reading obtained; `now` when none was)
    complete_since: dict[str, datetime | None] = field(default_factory=dict)

    @property
    def temperatures_complete_since(self) -> datetime | None:
        """None when the temperatures cover the whole fever window; else from when they are complete."""
        return self.complete_since.get("temperatures")

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
    *,
    now: datetime | None = None,
    windows: Mapping[str, int] | None = None,
) -> ResolvedData:
    """Combine the request's prefetch with FHIR fetches for whatever is absent or failed.

    `now` (aware; default the current UTC time) anchors the `windows` (prefetch key -> days back
    its readings must cover); a windowed key cut off short of its window is completed when a FHIR
    server may be called.
    """
    now = now or datetime.now(UTC)
    follow = follow_paging or {}
    context = body["context"]
    prefetch = body.get("prefetch") or {}
    resolved = ResolvedData()
    rendered: dict[str, str] = {}
    infos: dict[str, BundleInfo] = {}  # windowed keys: what their Bundle said about its completeness
    to_fetch: dict[str, str] = {}
    continue_paging: dict[str, str] = {}
    for key, template in templates.items():
        query = render_template(template, context)
        if query is None:
            resolved.by_key[key] = []  # the template does not apply to this context (e.g. no encounter)
            continue
        rendered[key] = query
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
            paging = bool(link) and follow.get(key, True)
            if paging:
                continue_paging[key] = link
            total = value.get("total")
            infos[key] = BundleInfo(
                len(resolved.by_key[key]),
                None if paging or not isinstance(total, int) or isinstance(total, bool) else total,
                bool(link) and not paging,
            )
        else:
            resolved.by_key[key] = [value]
    patient = resolved.patient()
    if patient is not None and patient.get("id") not in (None, context.get("patientId")):
        raise RequestError(400, "$.prefetch.patient is not the patient in $.context.patientId", "$.prefetch.patient")

    server = body.get("fhirServer")
    auth = body.get("fhirAuthorization")
    unusable = _server_unusable(server, auth, allowlist, allow_open_servers)
    token = auth.get("access_token") if auth else None
    if to_fetch or continue_paging:
        if unusable:
            resolved.missing.extend(
                MissingKey(key, f"not in prefetch and {unusable}") for key in [*to_fetch, *continue_paging]
            )
        else:
            queries = {**to_fetch, **continue_paging}
            results = client.fetch_all(server, token, _relative(queries, server), deadline, allowlist, follow_paging)
            for key, result in results.items():
                if not result.ok:
                    resolved.missing.append(MissingKey(key, result.reason or "fetch failed"))
                    continue
                resolved.by_key.setdefault(key, []).extend(result.resources)
                resolved.fetched_keys.append(key)
                if key in to_fetch:
                    infos[key] = BundleInfo(len(result.resources), result.total, result.has_next)
                if result.truncated:
                    # what was read is kept (partial mode uses it) but the key counts as not obtained: a search
                    # that pages on past the cap is either broken or too large to judge "nothing relevant" from
                    resolved.truncated_keys.append(key)
                    resolved.missing.append(
                        MissingKey(key, f"stopped after {result.pages} pages: the search did not end")
                    )
    _complete_windows(resolved, windows or {}, rendered, infos, now, unusable, client, server, token, deadline,
                      allowlist)
    return resolved


def _server_unusable(
    server: Any, auth: Any, allowlist: tuple[str, ...], allow_open_servers: bool
) -> str | None:
    """Why the request's FHIR server may not be called (None: it may)."""
    if not server:
        return "no fhirServer was sent"
    if not auth and not allow_open_servers:
        return "no fhirAuthorization was sent (open FHIR servers are not called)"
    if not url_allowed(server, allowlist):
        return "fhirServer is not on this service's FHIR server allowlist"
    return None


def _complete_windows(
    resolved: ResolvedData,
    windows: Mapping[str, int],
    rendered: dict[str, str],
    infos: dict[str, BundleInfo],
    now: datetime,
    unusable: str | None,
    client: FhirClient,
    server: str,
    token: str | None,
    deadline: float,
    allowlist: tuple[str, ...],
) -> None:
    """Decide, per windowed key, whether its readings reach the window start; fetch the rest if they don't."""
    missing = {m.key for m in resolved.missing}
    cut: dict[str, str] = {}
    for key, days in windows.items():
        if key not in rendered:  # no such template, or it does not apply: nothing to be had
            continue
        resources = resolved.by_key.get(key, [])
        if key in missing:
            resolved.complete_since[key] = complete_since(resources, now)
            continue
        start = window_start(now, days)
        info = infos.get(key)
        if info is not None and is_cut_off(info, rendered[key], resources, start):
            cut[key] = window_query(rendered[key], start)
        else:
            resolved.complete_since[key] = None
    if not cut:
        return
    if unusable:
        # not an error: the EHR gave what it had; the uncovered days are "not documented"
        for key in cut:
            resolved.complete_since[key] = complete_since(resolved.by_key.get(key, []), now)
        return
    results = client.fetch_all(server, token, _relative(cut, server), deadline, allowlist, dict.fromkeys(cut, True))
    for key, result in results.items():
        merged = merge(resolved.by_key.get(key, []), result.resources)
        resolved.by_key[key] = merged
        if result.ok and not result.truncated:
            resolved.complete_since[key] = None
            if key not in resolved.fetched_keys:
                resolved.fetched_keys.append(key)
            continue
        # the search is sorted newest first: what was read of it is contiguous with the latest readings
        resolved.complete_since[key] = complete_since(merged, now)
        why = result.reason or f"stopped after {result.pages} pages: the search did not end"
        resolved.missing.append(MissingKey(key, f"the readings of the last {windows[key]} days could not all be "
                                                f"fetched: {why}"))


def _relative(queries: dict[str, str], server: str) -> dict[str, str]:
    """Absolute next links on the same server become relative; others stay absolute (and are re-checked)."""
    base = server.rstrip("/") + "/"
    out = {}
    for key, query in queries.items():
        out[key] = query[len(base):] if query.startswith(base) else query
    return out
