"""The analytics report's model: the period, per-topic and weekly figures, and their JSON.

Definitions (also in docs/console.md), chosen so the numbers answer "what did clinicians do with the
cards we showed them in this period":

* The period selects **presentations** whose first card was served in it (``served_at``, UTC days,
  both ends inclusive). The answers count whenever they arrived.
* **De-duplication**: repeated cards of one topic for the same order within one encounter (or, without
  an encounter, one hook instance) are one presentation — EHRs re-send order-select on every edit of
  an order. ``servedRows`` keeps the raw count; the raw rows stay in the database.
* A presentation's **outcome is its latest answer by server receive time** (``received_at``, then
  arrival order). The client's ``outcomeTimestamp`` is shown as data, never used for ranking, so a
  feedback dated 2099 cannot outrank the real answer.
* **Acceptance rate = accepted / shown presentations**; override rate = overridden / shown.
* **Alert burden**: per topic, presentations shown, silent (topic in silent rollout: would have been
  shown), suppressed (withheld after an override), accepted, overridden, override reasons.
* Feedback naming a card never served (``unknown-card``) is counted separately; feedback sent to
  another service (``service-mismatch``) or by another client than the one the card was served to
  (``issuer-mismatch``) is ignored.
* Days purged by ``cds-service purge`` are read from the daily aggregates it kept: their counts and
  reasons remain, their comments do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from .render import _rate

#: Longest period a report covers: keeps the weekly CASE expression (one branch per week) bounded.
MAX_PERIOD_DAYS = 3 * 366
MAX_COMMENTS = 200


class PeriodError(ValueError):
    """The requested period is invalid; the message names the parameter."""


@dataclass(frozen=True)
class Period:
    """UTC days ``since``..``until``, both inclusive."""

    since: date
    until: date

    @classmethod
    def parse(cls, since: str | None, until: str | None, *, today: date | None = None,
              default_days: int = 90) -> Period:
        """Parse YYYY-MM-DD strings; missing ``until`` is today, missing ``since`` is *default_days* back."""
        today = today or datetime.now(UTC).date()
        end = _parse_day(until, "until") if until else today
        start = _parse_day(since, "since") if since else end - timedelta(days=default_days - 1)
        if start > end:
            raise PeriodError(f"since ({start}) is after until ({end})")
        if (end - start).days + 1 > MAX_PERIOD_DAYS:
            raise PeriodError(f"the period is longer than {MAX_PERIOD_DAYS} days; choose a shorter one")
        return cls(start, end)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive upper bound: midnight after ``until``."""
        return datetime.combine(self.until + timedelta(days=1), time.min, tzinfo=UTC)

    def week_buckets(self) -> list[WeekStats]:
        """Empty weekly buckets, the first and last marked partial when the period cuts them."""
        return [
            WeekStats(w, partial=w < self.since or w + timedelta(days=6) > self.until) for w in self.weeks()
        ]

    def weeks(self) -> list[date]:
        """Monday of every ISO week that overlaps the period."""
        monday = self.since - timedelta(days=self.since.weekday())
        out = []
        while monday <= self.until:
            out.append(monday)
            monday += timedelta(days=7)
        return out


def _parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise PeriodError(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from exc


@dataclass
class ReasonCount:
    code: str | None
    display: str | None
    system: str | None
    count: int

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "display": self.display, "system": self.system, "count": self.count}


@dataclass
class TopicStats:
    service_id: str
    topic: str
    display: str
    served: int = 0  # presentations shown (de-duplicated)
    accepted: int = 0
    overridden: int = 0
    reasons: list[ReasonCount] = field(default_factory=list)
    served_rows: int = 0  # raw served-card rows shown (before de-duplication)
    silent: int = 0  # presentations computed while the topic was silent: would have been shown
    suppressed: int = 0  # presentations withheld after an override (suppression rule)

    def add(self, other: TopicStats) -> None:
        for name in ("served", "accepted", "overridden", "served_rows", "silent", "suppressed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def no_answer(self) -> int:
        return self.served - self.accepted - self.overridden

    @property
    def acceptance_rate(self) -> float | None:
        return _rate(self.accepted, self.served)

    @property
    def override_rate(self) -> float | None:
        return _rate(self.overridden, self.served)

    def as_json(self) -> dict[str, Any]:
        return {
            "serviceId": self.service_id,
            "topic": self.topic,
            "display": self.display,
            "served": self.served,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "noAnswer": self.no_answer,
            "acceptanceRate": self.acceptance_rate,
            "overrideRate": self.override_rate,
            "overrideReasons": [r.as_json() for r in self.reasons],
            "servedRows": self.served_rows,
            "silentWouldHaveShown": self.silent,
            "suppressed": self.suppressed,
        }


@dataclass
class WeekStats:
    week_start: date
    served: int = 0
    accepted: int = 0
    overridden: int = 0
    partial: bool = False  # the period cuts this week: its counts cover fewer than 7 days
    silent: int = 0
    suppressed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "weekStart": self.week_start.isoformat(),
            "partial": self.partial,
            "served": self.served,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "acceptanceRate": _rate(self.accepted, self.served),
            "silentWouldHaveShown": self.silent,
            "suppressed": self.suppressed,
        }


@dataclass
class Comment:
    service_id: str
    topic: str
    reason_code: str | None
    reason_display: str | None
    comment: str
    outcome_timestamp: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "serviceId": self.service_id,
            "topic": self.topic,
            "reasonCode": self.reason_code,
            "reasonDisplay": self.reason_display,
            "comment": self.comment,
            "outcomeTimestamp": _iso(self.outcome_timestamp),
        }


@dataclass
class Report:
    """Everything the analytics page and `cds-service report` show for one period."""

    period: Period
    service_id: str | None
    topics: list[TopicStats]
    weeks: list[WeekStats]
    weeks_by_topic: dict[str, list[WeekStats]]
    comments: list[Comment]
    unknown_card_feedback: int
    database_ready: bool = True

    @property
    def totals(self) -> TopicStats:
        total = TopicStats(service_id="*", topic="*", display="All topics")
        for t in self.topics:
            total.add(t)
        return total

    def as_json(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "period": {"since": self.period.since.isoformat(), "until": self.period.until.isoformat()},
            "serviceId": self.service_id,
            "databaseReady": self.database_ready,
            "totals": {
                "served": totals.served,
                "accepted": totals.accepted,
                "overridden": totals.overridden,
                "noAnswer": totals.no_answer,
                "acceptanceRate": totals.acceptance_rate,
                "overrideRate": totals.override_rate,
                "unknownCardFeedback": self.unknown_card_feedback,
                "servedRows": totals.served_rows,
                "silentWouldHaveShown": totals.silent,
                "suppressed": totals.suppressed,
            },
            "topics": [t.as_json() for t in self.topics],
            "weeks": [w.as_json() for w in self.weeks],
            "weeksByTopic": {k: [w.as_json() for w in v] for k, v in self.weeks_by_topic.items()},
            "comments": [c.as_json() for c in self.comments],
        }

    def to_text(self) -> str:
        """The report as plain-text tables for a terminal (control characters stripped)."""
        from .render import report_text

        return report_text(self)

    def to_csv(self) -> str:
        """One row per service and topic, every text cell neutralised against formula injection."""
        from .render import report_csv

        return report_csv(self)


def _iso(value: datetime) -> str:
    return _aware(value).isoformat().replace("+00:00", "Z")


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


