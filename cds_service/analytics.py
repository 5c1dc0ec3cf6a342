"""Feedback analytics: per card topic and service, how many cards were served, accepted, overridden.

Used by the console (``/console/analytics`` and its JSON endpoint) and by the command line
(``cds-service report --since DATE [--until DATE] [--csv FILE]``), so the page and the terminal
always show the same figures.

Definitions (also in docs/console.md), chosen so the numbers answer "what did clinicians do with
the cards we showed them in this period":

* The period selects **cards served** in it (``served_at``, UTC days, both ends inclusive). The
  answers to those cards count whenever they arrived, so a card served on the last day and answered
  the next morning is not lost.
* A card's **outcome is its latest feedback** (by ``outcomeTimestamp``, then arrival): CDS Hooks
  allows a card to be reported more than once, and a clinician who overrides and then accepts has
  accepted. Cards never answered count as "no answer" (CDS Hooks never reports ignored cards).
* **Acceptance rate = accepted / served**; override rate = overridden / served.
* Feedback naming a card the service never served (flag ``unknown-card``) cannot be attributed to a
  topic; it is counted separately. Feedback sent to another service than the one that served the
  card (``service-mismatch``) is ignored.

Everything is SQLAlchemy Core over the store tables and portable between SQLite and PostgreSQL:
weekly buckets are a CASE over week boundaries computed in Python (no date functions, which differ
between the two databases), and the latest answer per card uses ROW_NUMBER() (SQLite ≥ 3.25).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, case, func, inspect, literal, or_, select
from sqlalchemy.exc import SQLAlchemyError

from .store import feedback, served_cards

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
    served: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: list[ReasonCount] = field(default_factory=list)

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
        }


@dataclass
class WeekStats:
    week_start: date
    served: int = 0
    accepted: int = 0
    overridden: int = 0
    partial: bool = False  # the period cuts this week: its counts cover fewer than 7 days

    def as_json(self) -> dict[str, Any]:
        return {
            "weekStart": self.week_start.isoformat(),
            "partial": self.partial,
            "served": self.served,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "acceptanceRate": _rate(self.accepted, self.served),
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
            total.served += t.served
            total.accepted += t.accepted
            total.overridden += t.overridden
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
            },
            "topics": [t.as_json() for t in self.topics],
            "weeks": [w.as_json() for w in self.weeks],
            "weeksByTopic": {k: [w.as_json() for w in v] for k, v in self.weeks_by_topic.items()},
            "comments": [c.as_json() for c in self.comments],
        }

    # ---- terminal and CSV ----------------------------------------------------------------------

    def to_text(self) -> str:
        """The report as plain-text tables for a terminal."""
        p = self.period
        scope = f" for {self.service_id}" if self.service_id else ""
        lines = [
            f"Card feedback{scope}: cards served {p.since} to {p.until} (UTC); outcome = latest answer per card",
            "",
        ]
        if not self.database_ready:
            lines += ["(no database or no feedback tables yet: nothing served)", ""]
        header = ("service", "topic", "served", "accepted", "overridden", "no answer", "accepted %", "overridden %")
        rows = [
            (t.service_id, t.topic, str(t.served), str(t.accepted), str(t.overridden), str(t.no_answer),
             _pct(t.acceptance_rate), _pct(t.override_rate))
            for t in self.topics
        ]
        tot = self.totals
        rows.append(("total", "", str(tot.served), str(tot.accepted), str(tot.overridden), str(tot.no_answer),
                     _pct(tot.acceptance_rate), _pct(tot.override_rate)))
        lines += _table(header, rows, numeric_from=2)
        if self.unknown_card_feedback:
            lines += ["", "Feedback for cards this service never served (not attributed): "
                      f"{self.unknown_card_feedback}"]
        reason_rows = [
            (t.service_id, t.topic, r.display or r.code or "(no reason given)", str(r.count))
            for t in self.topics for r in t.reasons
        ]
        lines += ["", "Override reasons"]
        lines += _table(("service", "topic", "reason", "count"), reason_rows, numeric_from=3) if reason_rows \
            else ["  (none)"]
        lines += ["", "Override comments"]
        if self.comments:
            for c in self.comments:
                reason = c.reason_display or c.reason_code or "—"
                lines.append(f"  {c.outcome_timestamp:%Y-%m-%d}  {c.topic}  [{reason}]  {_one_line(c.comment)}")
        else:
            lines.append("  (none)")
        lines += ["", "Weekly trend (week starting Monday)"]
        week_rows = [(w.week_start.isoformat() + (" (partial)" if w.partial else ""), str(w.served), str(w.accepted),
                      str(w.overridden), _pct(_rate(w.accepted, w.served))) for w in self.weeks]
        lines += _table(("week", "served", "accepted", "overridden", "accepted %"), week_rows, numeric_from=1)
        return "\n".join(lines) + "\n"

    CSV_FIELDS = (
        "since", "until", "service_id", "topic", "topic_display", "served", "accepted", "overridden",
        "no_answer", "acceptance_rate", "override_rate", "override_reasons",
    )

    def to_csv(self) -> str:
        """One row per service and topic (rates as fractions 0–1; reasons as "display (n); …")."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.CSV_FIELDS)
        for t in self.topics:
            writer.writerow([
                self.period.since.isoformat(), self.period.until.isoformat(), t.service_id, t.topic, t.display,
                t.served, t.accepted, t.overridden, t.no_answer,
                "" if t.acceptance_rate is None else f"{t.acceptance_rate:.4f}",
                "" if t.override_rate is None else f"{t.override_rate:.4f}",
                "; ".join(f"{r.display or r.code or '(no reason)'} ({r.count})" for r in t.reasons),
            ])
        return buffer.getvalue()


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}"


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _iso(value: datetime) -> str:
    return _aware(value).isoformat().replace("+00:00", "Z")


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).rjust(widths[i]) if i >= numeric_from else str(c).ljust(widths[i]) for i, c in enumerate(row)]
        return "  " + "  ".join(cells).rstrip()

    return [fmt(header), "  " + "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


def _latest_feedback():
    """The latest answer per served card (service-mismatch and unknown-card feedback excluded)."""
    ranked = (
        select(
            feedback.c.card_uuid,
            feedback.c.outcome,
            feedback.c.override_system,
            feedback.c.override_code,
            feedback.c.override_display,
            feedback.c.user_comment,
            feedback.c.outcome_timestamp,
            func.row_number()
            .over(
                partition_by=feedback.c.card_uuid,
                order_by=(feedback.c.outcome_timestamp.desc(), feedback.c.id.desc()),
            )
            .label("rank"),
        )
        .where(feedback.c.known_card.is_(True))
        .where(or_(feedback.c.flag.is_(None), feedback.c.flag != "service-mismatch"))
        .subquery("ranked")
    )
    return select(ranked).where(ranked.c.rank == 1).subquery("latest")


def build_report(
    engine: Engine,
    period: Period,
    service_id: str | None = None,
    topic_displays: Mapping[str, str] | None = None,
) -> Report:
    """Run the analytics queries for *period* (optionally one service)."""
    displays = dict(topic_displays or {})
    inspector = inspect(engine)
    if not (inspector.has_table(served_cards.name) and inspector.has_table(feedback.name)):
        return Report(period, service_id, [], period.week_buckets(), {}, [], 0, database_ready=False)

    latest = _latest_feedback()
    joined = served_cards.outerjoin(latest, latest.c.card_uuid == served_cards.c.card_uuid)
    in_period = [served_cards.c.served_at >= period.start, served_cards.c.served_at < period.end]
    if service_id:
        in_period.append(served_cards.c.service_id == service_id)
    accepted = func.sum(case((latest.c.outcome == "accepted", 1), else_=0))
    overridden = func.sum(case((latest.c.outcome == "overridden", 1), else_=0))

    weeks = period.weeks()
    boundaries = [datetime.combine(w + timedelta(days=7), time.min, tzinfo=UTC) for w in weeks]
    # week index = first boundary the card was served before (a CASE portable to every database)
    week_index = case(
        *[(served_cards.c.served_at < b, literal(i)) for i, b in enumerate(boundaries)],
        else_=literal(len(boundaries) - 1),
    ).label("week")

    with engine.connect() as conn:
        topic_rows = conn.execute(
            select(served_cards.c.service_id, served_cards.c.topic, func.count().label("served"),
                   accepted.label("accepted"), overridden.label("overridden"))
            .select_from(joined)
            .where(and_(*in_period))
            .group_by(served_cards.c.service_id, served_cards.c.topic)
        ).all()
        # grouped by code (system + code): an EHR that echoes another display must not split a reason
        reason_rows = conn.execute(
            select(served_cards.c.service_id, served_cards.c.topic, latest.c.override_system,
                   latest.c.override_code, func.max(latest.c.override_display).label("override_display"),
                   func.count().label("n"))
            .select_from(joined)
            .where(and_(*in_period, latest.c.outcome == "overridden"))
            .group_by(served_cards.c.service_id, served_cards.c.topic, latest.c.override_system,
                      latest.c.override_code)
        ).all()
        comment_rows = conn.execute(
            select(served_cards.c.service_id, served_cards.c.topic, latest.c.override_code,
                   latest.c.override_display, latest.c.user_comment, latest.c.outcome_timestamp)
            .select_from(joined)
            .where(and_(*in_period, latest.c.outcome == "overridden", latest.c.user_comment.is_not(None),
                        latest.c.user_comment != ""))
            .order_by(latest.c.outcome_timestamp.desc())
            .limit(MAX_COMMENTS)
        ).all()
        week_subquery = (
            select(week_index, served_cards.c.topic, latest.c.outcome)
            .select_from(joined)
            .where(and_(*in_period))
            .subquery("weekly")
        )
        week_rows = conn.execute(
            select(week_subquery.c.week, week_subquery.c.topic, func.count().label("served"),
                   func.sum(case((week_subquery.c.outcome == "accepted", 1), else_=0)).label("accepted"),
                   func.sum(case((week_subquery.c.outcome == "overridden", 1), else_=0)).label("overridden"))
            .group_by(week_subquery.c.week, week_subquery.c.topic)
        ).all()
        unknown_filter = [feedback.c.known_card.is_(False), feedback.c.received_at >= period.start,
                          feedback.c.received_at < period.end]
        if service_id:
            unknown_filter.append(feedback.c.service_id == service_id)
        unknown = conn.execute(select(func.count()).select_from(feedback).where(and_(*unknown_filter))).scalar_one()

    topics: dict[tuple[str, str], TopicStats] = {}
    for row in topic_rows:
        topics[(row.service_id, row.topic)] = TopicStats(
            service_id=row.service_id, topic=row.topic, display=displays.get(row.topic, row.topic),
            served=int(row.served), accepted=int(row.accepted or 0), overridden=int(row.overridden or 0),
        )
    for row in reason_rows:
        stats = topics.get((row.service_id, row.topic))
        if stats is not None:
            stats.reasons.append(ReasonCount(row.override_code, row.override_display, row.override_system, int(row.n)))
    for stats in topics.values():
        stats.reasons.sort(key=lambda r: (-r.count, r.display or r.code or ""))

    totals = period.week_buckets()
    by_topic: dict[str, list[WeekStats]] = defaultdict(period.week_buckets)
    for row in week_rows:
        index = int(row.week)
        for bucket in (totals[index], by_topic[row.topic][index]):
            bucket.served += int(row.served)
            bucket.accepted += int(row.accepted or 0)
            bucket.overridden += int(row.overridden or 0)

    ordered = sorted(topics.values(), key=lambda t: (-t.served, t.service_id, t.topic))
    comments = [
        Comment(row.service_id, row.topic, row.override_code, row.override_display, row.user_comment,
                _aware(row.outcome_timestamp))
        for row in comment_rows
    ]
    return Report(period, service_id, ordered, totals, dict(sorted(by_topic.items())), comments, int(unknown))


def topic_displays(cards_dir: Path | str | None = None) -> dict[str, str]:
    """Human names of the card topics, from the card files (topic codes when they cannot be read)."""
    try:
        from .cards import CardCatalog, default_cards_dir

        catalog = CardCatalog.load(cards_dir or default_cards_dir())
    except Exception:  # noqa: BLE001 - names are a nicety; the report must still print
        return {}
    return {topic: card.display for topic, card in catalog.cards.items()}


# --------------------------------------------------------------------------------------------
# Command line: cds-service report
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``cds-service report --since DATE [--until DATE] [--service ID] [--csv FILE] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="cds-service report",
        description="Cards served, accepted and overridden per topic and service, with override reasons, "
        "comments and the weekly trend (the figures of /console/analytics).",
    )
    parser.add_argument("--since", required=True, help="first day, YYYY-MM-DD (UTC, inclusive)")
    parser.add_argument("--until", help="last day, YYYY-MM-DD (UTC, inclusive; default today)")
    parser.add_argument("--service", help="only this service id")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write one CSV row per service and topic")
    parser.add_argument("--json", action="store_true", help="print the JSON of /console/api/analytics instead")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: CDS_DATABASE_URL / CDS_DATA_DIR)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from .settings import Settings, SettingsError
    from .store import Store

    try:
        period = Period.parse(args.since, args.until)
        settings = Settings.from_env()
    except (PeriodError, SettingsError) as exc:
        print(f"cds-service report: {exc}", file=sys.stderr)
        return 2
    url = args.database_url or settings.effective_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        # do not create an empty database just to report on it
        report = Report(period, args.service, [], period.week_buckets(), {}, [], 0, database_ready=False)
        return _print(report, args)
    store = Store(url)
    try:
        report = build_report(store.engine, period, args.service, topic_displays(settings.cards_dir))
    except SQLAlchemyError as exc:
        print(f"cds-service report: database unavailable ({type(exc).__name__})", file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()
    return _print(report, args)


def _print(report: Report, args: argparse.Namespace) -> int:
    if args.json:
        import json

        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(report.to_text())
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(report.to_csv(), encoding="utf-8")
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
