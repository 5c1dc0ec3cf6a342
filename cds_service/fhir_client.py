"""All outbound FHIR access: one keep-alive session, parallel queries, paging, deadline, allowlist.

The EHR's FHIR server is input, not trust: a URL is called only when it matches the allowlist,
redirects are never followed off it, every response is size-capped, and every call finishes
inside the request's overall deadline.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from .compute_gate import released
from .metrics import FHIR_CALL_LATENCY, FHIR_FAILURES, coarse_reason
from .urls import url_allowed

log = logging.getLogger("cds_service.fhir")

@dataclass
class FetchResult:
    """Outcome of one prefetch query against the FHIR server."""

    key: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = True
    reason: str | None = None
    status: int | None = None
    pages: int = 0
    truncated: bool = False
    elapsed_ms: float = 0.0
    # what the first Bundle said about itself: `total`, and a `next` link left unfollowed
    # (follow_paging off), so a "latest N" search can tell it was cut off
    total: int | None = None
    has_next: bool = False


class FetchFailed(Exception):
    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class FhirClient:
    """Shared by all requests of a worker: pooled keep-alive connections and a thread pool."""

    def __init__(
        self,
        timeout: float,
        max_pages: int,
        max_response_bytes: int,
        max_parallel: int = 16,
        session: requests.Session | None = None,
    ):
        self.timeout = timeout
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max_parallel, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.trust_env = False  # never route patient data through an ambient proxy
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="fhir")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()

    def fetch_all(
        self,
        base_url: str,
        token: str | None,
        queries: dict[str, str],
        deadline: float,
        allowlist: tuple[str, ...],
        follow_paging: dict[str, bool] | None = None,
    ) -> dict[str, FetchResult]:
        """Run every query in parallel; each result is ok or carries the reason it failed.

        `deadline` is an absolute time.monotonic() value shared by all queries.
        """
        follow_paging = follow_paging or {}
        futures = {
            key: self.pool.submit(
                self._fetch_one, key, base_url, token, query, deadline, allowlist, follow_paging.get(key, True)
            )
            for key, query in queries.items()
        }
        with released():  # other hook calls compute while this one waits on the FHIR server
            wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()) + 0.05)
        results: dict[str, FetchResult] = {}
        for key, future in futures.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                results[key] = future.result()
            elif future.done() and future.exception() is not None:
                results[key] = FetchResult(key, ok=False, reason=f"internal error: {type(future.exception()).__name__}")
            else:
                future.cancel()
                results[key] = FetchResult(key, ok=False, reason="deadline exceeded")
        return results

    def _fetch_one(
        self,
        key: str,
        base_url: str,
        token: str | None,
        query: str,
        deadline: float,
        allowlist: tuple[str, ...],
        follow_paging: bool,
    ) -> FetchResult:
        started = time.monotonic()
        result = FetchResult(key)
        url: str | None = (
            query if query.startswith(("http://", "https://")) else base_url.rstrip("/") + "/" + query.lstrip("/")
        )
        try:
            while url:
                if result.pages >= self.max_pages:
                    result.truncated = True
                    break
                body = self._get_json(url, token, deadline, allowlist, same_origin(base_url))
                result.pages += 1
                url = None
                if body.get("resourceType") == "Bundle":
                    entries = body.get("entry")
                    if entries is not None and not isinstance(entries, list):
                        raise FetchFailed("FHIR server returned a Bundle whose entry is not an array", 200)
                    for entry in entries or []:
                        resource = entry.get("resource") if isinstance(entry, dict) else None
                        if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                            result.resources.append(resource)
                    total = body.get("total")
                    if result.pages == 1 and isinstance(total, int) and not isinstance(total, bool):
                        result.total = total
                    next_url = next_link(body)
                    if next_url and follow_paging:
                        url = urljoin(base_url.rstrip("/") + "/", next_url)
                    elif next_url:
                        result.has_next = True
                elif body.get("resourceType") == "OperationOutcome":
                    raise FetchFailed("server returned an OperationOutcome")
                else:
                    result.resources.append(body)
        except FetchFailed as failure:
            result.ok = False
            result.reason = failure.reason
            result.status = failure.status
        result.elapsed_ms = (time.monotonic() - started) * 1000
        FHIR_CALL_LATENCY.labels("ok" if result.ok else "failed").observe(result.elapsed_ms / 1000)
        if not result.ok:
            FHIR_FAILURES.labels(coarse_reason(result.reason)).inc()
        log.debug(
            "fhir query finished",
            extra={
                "prefetch_key": key,
                "ok": result.ok,
                "pages": result.pages,
                "elapsed_ms": round(result.elapsed_ms, 1),
                "fhir_status": result.status,
            },
        )
        return result

    def _get_json(
        self, url: str, token: str | None, deadline: float, allowlist: tuple[str, ...], origin: tuple[str, ...]
    ) -> dict[str, Any]:
        for _redirect in range(4):
            if not url_allowed(url, allowlist):
                raise FetchFailed("URL is not on the FHIR server allowlist")
            # strict: a server that does not support a search parameter must fail the search rather than
            # ignore the parameter and return a superset (other patients' data, in the worst case)
            headers = {"Accept": "application/fhir+json", "Prefer": "handling=strict"}
            if token and same_origin(url) == origin:
                # the EHR's token goes to the fhirServer it was issued for, never to another host a
                # redirect or a `next` link names, even an allowlisted one
                headers["Authorization"] = f"Bearer {token}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchFailed("deadline exceeded")
            timeout = min(self.timeout, remaining)
            try:
                response = self.session.get(
                    url, headers=headers, timeout=(timeout, timeout), stream=True, allow_redirects=False
                )
            except requests.Timeout as exc:
                raise FetchFailed("FHIR server timed out") from exc
            except requests.RequestException as exc:
                raise FetchFailed(f"FHIR server unreachable ({type(exc).__name__})") from exc
            with response:
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    url = urljoin(url, location)
                    continue  # re-checked against the allowlist at the top of the loop
                if response.status_code != 200:
                    raise FetchFailed(f"FHIR server answered HTTP {response.status_code}", response.status_code)
                content = self._read_capped(response, deadline)
            try:
                body = orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                raise FetchFailed("FHIR server returned malformed JSON", 200) from exc
            if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
                raise FetchFailed("FHIR server returned JSON that is not a FHIR resource", 200)
            return body
        raise FetchFailed("too many redirects")

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise FetchFailed("FHIR response exceeds the size limit", response.status_code)
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise FetchFailed("FHIR response exceeds the size limit", response.status_code)
                if time.monotonic() > deadline:
                    raise FetchFailed("deadline exceeded while reading the FHIR response", response.status_code)
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise FetchFailed(f"FHIR response interrupted ({type(exc).__name__})", response.status_code) from exc
        return b"".join(chunks)


def same_origin(url: str) -> tuple[str, ...]:
    """(scheme, host, port) with default ports filled in: what decides where a bearer token may go."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        return ("invalid",)
    return (parts.scheme, (parts.hostname or "").lower(), str(port))


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None
