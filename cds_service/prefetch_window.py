"""Complete time windows for "latest N" prefetch keys (today: the temperatures of the fever red flag).

A template such as `Observation?…&_sort=-date&_count=50` keeps prefetch small, but a ward patient
with hourly readings has more than 50 in the 14-day fever window: the oldest readings of the window
are cut off, and a fever among them would be silently lost. This module decides whether what was
obtained reaches back to the window start, builds the date-bounded search that fetches the rest
(same codes as the template: the value set is the one source of the code list), and merges.

Readings' instants: effective[x] (dateTime, instant, Period start/end), else `issued`. A dateTime
without an offset is read as UTC; a partial date ("2026-11") as its first instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

# Page size of the date-bounded search: a 14-day window of 15-minute ICU readings is ~1,350.
WINDOW_PAGE_SIZE = 500
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


@dataclass(frozen=True)
class BundleInfo:
    """What a searchset Bundle says about its own completeness."""

    entries: int
    total: int | None
    has_next: bool


def window_start(now: datetime, days: int) -> datetime:
    """Earliest instant whose day can fall in a `days`-day window, in any site time zone.

    The clinical rule counts calendar days in the site's zone (up to ±14 h from UTC) and a day can
    last 25 h: one extra day back covers every zone; readings in the margin cost little.
    """
    aware = now if now.tzinfo else now.replace(tzinfo=UTC)
    return aware - timedelta(days=days + 1)


def parse_instant(text: Any) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware datetime (earliest instant of a partial date)."""
    if not isinstance(text, str) or not text:
        return None
    partial = _PARTIAL.match(text)
    if partial:
        return datetime(int(partial.group(1)), int(partial.group(2) or 1), 1, tzinfo=UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def reading_instant(resource: Mapping[str, Any]) -> datetime | None:
    """When an Observation was taken (what the FHIR `date` search parameter looks at)."""
    for name in ("effectiveDateTime", "effectiveInstant"):
        found = parse_instant(resource.get(name))
        if found:
            return found
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        found = parse_instant(period.get("end")) or parse_instant(period.get("start"))
        if found:
            return found
    return parse_instant(resource.get("issued"))


def oldest_reading(resources: Iterable[Mapping[str, Any]]) -> datetime | None:
    instants = [i for i in (reading_instant(r) for r in resources) if i is not None]
    return min(instants) if instants else None


def requested_count(query: str) -> int | None:
    """The `_count` a rendered template asked for (None when it asked for none)."""
    _, _, query_string = query.partition("?")
    for name, value in parse_qsl(query_string):
        if name == "_count" and value.isdigit():
            return int(value)
    return None


def is_cut_off(
    info: BundleInfo, query: str, resources: list[dict[str, Any]], start: datetime
) -> bool:
    """A Bundle is cut off when it says so (a `next` link not followed, `total` above its entries) or
    when it holds exactly the `_count` asked for and its oldest reading is younger than `start`."""
    if info.has_next or (info.total is not None and info.total > info.entries):
        return True
    count = requested_count(query)
    if count is not None and info.entries >= count:
        oldest = oldest_reading(resources)
        return oldest is None or oldest > start
    return False


def window_query(query: str, start: datetime) -> str:
    """The template's search without its "latest N" (`_sort`, `_count`), bounded to the window.

    The bound is a date (the start of `start`'s UTC day): every server parses it the same way.
    """
    path, _, query_string = query.partition("?")
    params = [(k, v) for k, v in parse_qsl(query_string, keep_blank_values=True) if k not in ("_sort", "_count")]
    params += [("date", f"ge{start.astimezone(UTC).date().isoformat()}"), ("_sort", "-date"),
               ("_count", str(WINDOW_PAGE_SIZE))]
    return f"{path}?{urlencode(params, safe=',|:/')}"


def merge(first: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`first` then the resources of `more` not already in it (same type and id)."""
    seen = {(r.get("resourceType"), r.get("id")) for r in first if isinstance(r.get("id"), str)}
    out = list(first)
    for resource in more:
        marker = (resource.get("resourceType"), resource.get("id"))
        if isinstance(marker[1], str):
            if marker in seen:
                continue
            seen.add(marker)
        out.append(resource)
    return out


def complete_since(resources: list[dict[str, Any]], now: datetime) -> datetime:
    """From when the readings obtained are known complete: the oldest one (now when there is none)."""
    return oldest_reading(resources) or (now if now.tzinfo else now.replace(tzinfo=UTC))
