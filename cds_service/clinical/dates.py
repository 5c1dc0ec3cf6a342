"""FHIR date handling at day granularity.

FHIR dates may be partial ("2024", "2024-05") and dateTimes carry a time zone. The rules only need
calendar days, so every value becomes a :class:`DateSpan` (earliest and latest plausible day).
(rev 2) A dateTime with an offset is converted to the site's time zone before its day is taken: the
zone of the evaluation's ``now`` (an aware datetime in CDS_TIMEZONE), installed for one evaluation
with :func:`site_zone`. Date-only values, and dateTimes without an offset, keep the day as written.
Which end a rule uses is a documented choice: onsets and "started at least N weeks ago" use the
earliest day; "within the last N days" uses the latest day
(a partial date counts if any part of it falls in the window).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T.*)?$")
_OFFSET_RE = re.compile(r"T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})$")
_ZONE: ContextVar[tzinfo | None] = ContextVar("site_zone", default=None)


@contextmanager
def site_zone(zone: tzinfo | None) -> Iterator[None]:
    """Convert offset dateTimes to *zone* while this block runs (one evaluation; thread/async safe)."""
    token = _ZONE.set(zone)
    try:
        yield
    finally:
        _ZONE.reset(token)


def zone_of(now: datetime | date) -> tzinfo | None:
    return now.tzinfo if isinstance(now, datetime) else None


def local_day(moment: datetime | date) -> date:
    """The calendar day of an instant in the site's zone (naive datetimes and plain dates: as written)."""
    if not isinstance(moment, datetime):
        return moment
    zone = _ZONE.get()
    if zone is not None and moment.tzinfo is not None:
        return moment.astimezone(zone).date()
    return moment.date()


def _zoned_day(text: str) -> date | None:
    """The site-zone day of a dateTime with an offset, else None (take the day as written)."""
    zone = _ZONE.get()
    if zone is None or not _OFFSET_RE.search(text):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(zone).date()


@dataclass(frozen=True)
class DateSpan:
    """A FHIR date/dateTime reduced to the days it may denote."""

    earliest: date
    latest: date
    text: str  # the original string, kept for evidence

    @property
    def partial(self) -> bool:
        return self.earliest != self.latest


def parse_fhir_date(value: object) -> DateSpan | None:
    """Parse a FHIR date, dateTime or instant; None when absent or malformed (never raises)."""
    if not isinstance(value, str):
        return None
    match = _DATE_RE.match(value.strip())
    if not match:
        return None
    year_s, month_s, day_s = match.groups()
    try:
        year = int(year_s)
        if month_s is None:
            return DateSpan(date(year, 1, 1), date(year, 12, 31), value)
        month = int(month_s)
        if day_s is None:
            last = calendar.monthrange(year, month)[1]
            return DateSpan(date(year, month, 1), date(year, month, last), value)
        day = _zoned_day(value.strip()) or date(year, month, int(day_s))
        return DateSpan(day, day, value)
    except ValueError:
        return None


def today_of(now: datetime | date) -> date:
    """The evaluation day: the calendar date of ``now`` in its own zone (the engine passes it in the site zone)."""
    return now.date() if isinstance(now, datetime) else now


def add_months(day: date, months: int) -> date:
    """Calendar-month arithmetic; the day is clamped to the end of a shorter month (31 Jan + 1 = end Feb)."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


def add_years(day: date, years: int) -> date:
    return add_months(day, 12 * years)


def completed_years(born: date, on: date) -> int:
    """Age in completed years (a birthday counts on the day itself)."""
    years = on.year - born.year
    if (on.month, on.day) < (born.month, born.day):
        years -= 1
    return years


def days_between(start: date, end: date) -> int:
    return (end - start).days


def within_last_days(span: DateSpan, today: date, days: int) -> bool:
    """True when the latest plausible day lies in [today - days, today] (inclusive at both ends)."""
    latest = min(span.latest, today)
    return span.earliest <= today and latest >= today - timedelta(days=days)


def within_last_months(span: DateSpan, today: date, months: int) -> bool:
    """True when the latest plausible day lies in [today - months (calendar), today]."""
    latest = min(span.latest, today)
    return span.earliest <= today and latest >= add_months(today, -months)
