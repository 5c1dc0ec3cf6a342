"""The analytics queries: presentations, their latest answers, and the aggregates purge kept.

SQLAlchemy Core, portable between SQLite and PostgreSQL: weekly buckets are a CASE over week
boundaries computed in Python (no date functions, which differ between the two), the latest answer per
presentation uses ROW_NUMBER() (SQLite ≥ 3.25). Rows written before revision 0002 have no
``presentation_key``: each such card is its own presentation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import Engine, and_, case, func, inspect, literal, or_, select

from ..store import EXCLUDED_FLAGS
from ..tables import (
    DISPOSITION_SHOWN,
    DISPOSITION_SILENT,
    DISPOSITION_SUPPRESSED,
    analytics_daily,
    analytics_reasons_daily,
    feedback,
    served_cards,
)
from .model import Comment, Period, ReasonCount, Report, TopicStats, WeekStats, _aware

MAX_COMMENTS = 200

_PRESENTATION = func.coalesce(served_cards.c.presentation_key, served_cards.c.card_uuid)


def _presentations(period: Period, service_id: str | None):
    """One row per presentation whose cards were served in the period."""
    where = [served_cards.c.served_at >= period.start, served_cards.c.served_at < period.end]
    if service_id:
        where.append(served_cards.c.service_id == service_id)
    return (
        select(_PRESENTATION.label("pkey"), served_cards.c.service_id, served_cards.c.topic,
               served_cards.c.disposition, func.min(served_cards.c.served_at).label("first_served"),
               func.count().label("rows"))
        .where(and_(*where))
        .group_by(_PRESENTATION, served_cards.c.service_id, served_cards.c.topic, served_cards.c.disposition)
        .subquery("presentations")
    )


def latest_answers():
    """The latest answer per presentation, by server receive time (flagged feedback excluded)."""
    pkey = _PRESENTATION.label("pkey")
    ranked = (
        select(
            pkey,
            feedback.c.outcome,
            feedback.c.override_system,
            feedback.c.override_code,
            feedback.c.override_display,
            feedback.c.user_comment,
            feedback.c.outcome_timestamp,
            func.row_number()
            .over(partition_by=_PRESENTATION, order_by=(feedback.c.received_at.desc(), feedback.c.id.desc()))
            .label("rank"),
        )
        .select_from(feedback.join(served_cards, served_cards.c.card_uuid == feedback.c.card_uuid))
        .where(feedback.c.known_card.is_(True))
        .where(or_(feedback.c.flag.is_(None), feedback.c.flag.not_in(EXCLUDED_FLAGS)))
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
    has_aggregates = inspector.has_table(analytics_daily.name)

    pres = _presentations(period, service_id)
    latest = latest_answers()
    joined = pres.outerjoin(latest, latest.c.pkey == pres.c.pkey)
    shown = pres.c.disposition == DISPOSITION_SHOWN
    accepted = func.sum(case((and_(shown, latest.c.outcome == "accepted"), 1), else_=0))
    overridden = func.sum(case((and_(shown, latest.c.outcome == "overridden"), 1), else_=0))

    weeks = period.weeks()
    boundaries = [datetime.combine(w + timedelta(days=7), time.min, tzinfo=UTC) for w in weeks]
    week_index = case(
        *[(pres.c.first_served < b, literal(i)) for i, b in enumerate(boundaries)],
        else_=literal(len(boundaries) - 1),
    ).label("week")

    with engine.connect() as conn:
        topic_rows = conn.execute(
            select(pres.c.service_id, pres.c.topic, pres.c.disposition, func.count().label("presentations"),
                   func.sum(pres.c.rows).label("rows"), accepted.label("accepted"), overridden.label("overridden"))
            .select_from(joined)
            .group_by(pres.c.service_id, pres.c.topic, pres.c.disposition)
        ).all()
        # grouped by code (system + code): an EHR echoing another display must not split a reason (issue 13)
        reason_rows = conn.execute(
            select(pres.c.service_id, pres.c.topic, latest.c.override_system, latest.c.override_code,
                   func.max(latest.c.override_display).label("override_display"), func.count().label("n"))
            .select_from(joined)
            .where(and_(shown, latest.c.outcome == "overridden"))
            .group_by(pres.c.service_id, pres.c.topic, latest.c.override_system, latest.c.override_code)
        ).all()
        comment_rows = conn.execute(
            select(pres.c.service_id, pres.c.topic, latest.c.override_code, latest.c.override_display,
                   latest.c.user_comment, latest.c.outcome_timestamp)
            .select_from(joined)
            .where(and_(shown, latest.c.outcome == "overridden", latest.c.user_comment.is_not(None),
                        latest.c.user_comment != ""))
            .order_by(latest.c.outcome_timestamp.desc())
            .limit(MAX_COMMENTS)
        ).all()
        weekly = select(week_index, pres.c.topic, pres.c.disposition, latest.c.outcome).select_from(joined) \
            .subquery("weekly")
        week_rows = conn.execute(
            select(weekly.c.week, weekly.c.topic, weekly.c.disposition, func.count().label("n"),
                   func.sum(case((weekly.c.outcome == "accepted", 1), else_=0)).label("accepted"),
                   func.sum(case((weekly.c.outcome == "overridden", 1), else_=0)).label("overridden"))
            .group_by(weekly.c.week, weekly.c.topic, weekly.c.disposition)
        ).all()
        unknown_filter = [feedback.c.known_card.is_(False), feedback.c.received_at >= period.start,
                          feedback.c.received_at < period.end]
        if service_id:
            unknown_filter.append(feedback.c.service_id == service_id)
        unknown = conn.execute(select(func.count()).select_from(feedback).where(and_(*unknown_filter))).scalar_one()
        kept, kept_reasons = _aggregates(conn, period, service_id) if has_aggregates else ([], [])

    topics: dict[tuple[str, str], TopicStats] = {}

    def stats_for(service: str, topic: str) -> TopicStats:
        key = (service, topic)
        if key not in topics:
            topics[key] = TopicStats(service_id=service, topic=topic, display=displays.get(topic, topic))
        return topics[key]

    totals = period.week_buckets()
    by_topic: dict[str, list[WeekStats]] = defaultdict(period.week_buckets)
    for row in topic_rows:
        _count(stats_for(row.service_id, row.topic), row.disposition, int(row.presentations), int(row.rows or 0),
               int(row.accepted or 0), int(row.overridden or 0))
    for row in week_rows:
        for bucket in (totals[int(row.week)], by_topic[row.topic][int(row.week)]):
            _count(bucket, row.disposition, int(row.n), 0, int(row.accepted or 0), int(row.overridden or 0))
    for row in kept:
        _count(stats_for(row.service_id, row.topic), row.disposition, row.presentations, row.served, row.accepted,
               row.overridden)
        index = min((row.day - weeks[0]).days // 7, len(weeks) - 1)
        for bucket in (totals[index], by_topic[row.topic][index]):
            _count(bucket, row.disposition, row.presentations, 0, row.accepted, row.overridden)

    # one count per reason code (system + code), whatever display the EHR echoed (issue 13)
    reasons: dict[tuple[str, str], dict[tuple, tuple[str | None, int]]] = defaultdict(dict)
    for row in [*reason_rows, *kept_reasons]:
        key = (row.override_code, row.override_system)
        display, n = reasons[(row.service_id, row.topic)].get(key, (None, 0))
        reasons[(row.service_id, row.topic)][key] = (display or row.override_display, n + int(row.n))
    for key, counts in reasons.items():
        stats = stats_for(*key)
        stats.reasons = sorted(
            (ReasonCount(code, display, system, n) for (code, system), (display, n) in counts.items()),
            key=lambda r: (-r.count, r.display or r.code or ""),
        )

    ordered = sorted(topics.values(), key=lambda t: (-t.served, -t.silent, t.service_id, t.topic))
    comments = [
        Comment(row.service_id, row.topic, row.override_code, row.override_display, row.user_comment,
                _aware(row.outcome_timestamp))
        for row in comment_rows
    ]
    return Report(period, service_id, ordered, totals, dict(sorted(by_topic.items())), comments, int(unknown))


def _count(target: TopicStats | WeekStats, disposition: str, presentations: int, rows: int, accepted: int,
           overridden: int) -> None:
    if disposition == DISPOSITION_SILENT:
        target.silent += presentations
    elif disposition == DISPOSITION_SUPPRESSED:
        target.suppressed += presentations
    else:
        target.served += presentations
        target.accepted += accepted
        target.overridden += overridden
        if isinstance(target, TopicStats):
            target.served_rows += rows


def _aggregates(conn, period: Period, service_id: str | None):
    """Daily counts that `cds-service purge` kept for days whose rows it deleted."""
    where = [analytics_daily.c.day >= period.since, analytics_daily.c.day <= period.until]
    reason_where = [analytics_reasons_daily.c.day >= period.since, analytics_reasons_daily.c.day <= period.until]
    if service_id:
        where.append(analytics_daily.c.service_id == service_id)
        reason_where.append(analytics_reasons_daily.c.service_id == service_id)
    kept = conn.execute(select(analytics_daily).where(and_(*where))).all()
    kept_reasons = conn.execute(
        select(analytics_reasons_daily.c.service_id, analytics_reasons_daily.c.topic,
               analytics_reasons_daily.c.override_system, analytics_reasons_daily.c.override_code,
               func.max(analytics_reasons_daily.c.override_display).label("override_display"),
               func.sum(analytics_reasons_daily.c.count).label("n"))
        .where(and_(*reason_where))
        .group_by(analytics_reasons_daily.c.service_id, analytics_reasons_daily.c.topic,
                  analytics_reasons_daily.c.override_system, analytics_reasons_daily.c.override_code)
    ).all()
    return kept, kept_reasons


def topic_displays(cards_dir: Path | str | None = None) -> dict[str, str]:
    """Human names of the card topics, from the card files (topic codes when they cannot be read)."""
    try:
        from ..cards import CardCatalog, default_cards_dir

        catalog = CardCatalog.load(cards_dir or default_cards_dir())
    except Exception:  # noqa: BLE001 - names are a nicety; the report must still print
        return {}
    return {topic: card.display for topic, card in catalog.cards.items()}
