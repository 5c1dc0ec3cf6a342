"""Retention: ``cds-service purge`` deletes old served-card and feedback rows and keeps their counts.

Every hook call adds a served-card row (about 220 bytes in SQLite; 23 MB per 105 000 calls in a soak),
kept forever before this. ``purge`` deletes the presentations whose cards were served before the
cutoff (UTC midnight, ``days`` ago; default ``CDS_RETENTION_DAYS``, :data:`DEFAULT_RETENTION_DAYS`),
with their feedback, and adds what analytics need to the daily aggregates
(``analytics_daily``, ``analytics_reasons_daily``): presentations, raw rows, accepted, overridden and
override reasons per day, service, topic and disposition. Reports over purged days read the
aggregates, so long-term figures survive; free-text comments and patient hashes do not.

Safe while instances serve, on SQLite and PostgreSQL: each batch is one transaction that *deletes*
the rows and aggregates exactly the rows its DELETE … RETURNING gave back, so two purges running at
once never count a row twice, and rows served now are never touched (they are after the cutoff).
Feedback that arrives for a card being purged at that moment is kept; purge removes it once it is
older than the cutoff. A presentation whose cards straddle the cutoff is counted on both sides.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select

from .store import EXCLUDED_FLAGS
from .tables import DISPOSITION_SHOWN, analytics_daily, analytics_reasons_daily, feedback, served_cards, suppressions

#: Default retention of served-card and feedback rows: 13 months, so a year can be compared with the
#: previous one from rows (aggregates are kept beyond it anyway).
DEFAULT_RETENTION_DAYS = 400
BATCH_PRESENTATIONS = 2000

_PRESENTATION = func.coalesce(served_cards.c.presentation_key, served_cards.c.card_uuid)


@dataclass
class PurgeResult:
    cutoff: datetime
    served_rows: int = 0
    feedback_rows: int = 0
    presentations: int = 0
    suppressions: int = 0

    def summary(self) -> str:
        return (f"purged rows served before {self.cutoff:%Y-%m-%d %H:%M} UTC: {self.served_rows} served cards "
                f"({self.presentations} presentations kept as daily counts), {self.feedback_rows} feedback rows, "
                f"{self.suppressions} expired suppressions")


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    """UTC midnight ``days`` days before ``now``: whole days go into the aggregates."""
    if days < 1:
        raise ValueError("retention days must be at least 1")
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return datetime.combine(today - timedelta(days=days), time.min, tzinfo=UTC)


def purge(engine: Engine, days: int, *, now: datetime | None = None,
          batch: int = BATCH_PRESENTATIONS) -> PurgeResult:
    """Delete rows older than ``days`` days, aggregating them first (see the module docstring)."""
    now = now or datetime.now(UTC)
    result = PurgeResult(cutoff_for(days, now))
    while True:
        with engine.begin() as conn:
            if not _purge_batch(conn, result, batch):
                break
    with engine.begin() as conn:
        known = select(served_cards.c.card_uuid)
        result.feedback_rows += conn.execute(delete(feedback).where(and_(
            feedback.c.received_at < result.cutoff, feedback.c.card_uuid.not_in(known)))).rowcount or 0
        result.suppressions = conn.execute(delete(suppressions).where(suppressions.c.until <= now)).rowcount or 0
    return result


def _purge_batch(conn: Connection, result: PurgeResult, batch: int) -> bool:
    keys = conn.execute(
        select(_PRESENTATION).where(served_cards.c.served_at < result.cutoff).group_by(_PRESENTATION).limit(batch)
    ).scalars().all()
    if not keys:
        return False
    cards = conn.execute(
        delete(served_cards)
        .where(and_(or_(served_cards.c.presentation_key.in_(keys),
                        and_(served_cards.c.presentation_key.is_(None), served_cards.c.card_uuid.in_(keys))),
                    served_cards.c.served_at < result.cutoff))
        .returning(served_cards.c.card_uuid, served_cards.c.service_id, served_cards.c.topic,
                   served_cards.c.disposition, served_cards.c.served_at, served_cards.c.presentation_key)
    ).all()
    if not cards:
        return True  # another purge took them: look again
    uuids = [c.card_uuid for c in cards]
    answers = []
    for start in range(0, len(uuids), 500):
        answers += conn.execute(
            delete(feedback).where(feedback.c.card_uuid.in_(uuids[start:start + 500]))
            .returning(feedback.c.id, feedback.c.card_uuid, feedback.c.outcome, feedback.c.received_at,
                       feedback.c.flag, feedback.c.known_card, feedback.c.override_system, feedback.c.override_code,
                       feedback.c.override_display)
        ).all()
    daily, reasons = _aggregate(cards, answers)
    _add(conn, analytics_daily, daily, ("served", "presentations", "accepted", "overridden"))
    _add(conn, analytics_reasons_daily, reasons, ("count",))
    result.served_rows += len(cards)
    result.feedback_rows += len(answers)
    result.presentations += sum(row["presentations"] for row in daily)
    return True


def _aggregate(cards: list[Any], answers: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Presentations → daily rows, with each presentation's latest valid answer (server receive time)."""
    by_card = {c.card_uuid: c for c in cards}
    presentations: dict[tuple, dict[str, Any]] = {}
    for card in cards:
        key = (card.presentation_key or card.card_uuid, card.service_id, card.topic, card.disposition)
        entry = presentations.setdefault(key, {"first": card.served_at, "rows": 0, "latest": None})
        entry["first"] = min(entry["first"], card.served_at)
        entry["rows"] += 1
    for answer in answers:
        if not answer.known_card or answer.flag in EXCLUDED_FLAGS:
            continue
        card = by_card[answer.card_uuid]
        entry = presentations[(card.presentation_key or card.card_uuid, card.service_id, card.topic,
                               card.disposition)]
        if entry["latest"] is None or (answer.received_at, answer.id) > (entry["latest"].received_at,
                                                                          entry["latest"].id):
            entry["latest"] = answer
    daily: dict[tuple, dict[str, Any]] = defaultdict(
        lambda: {"served": 0, "presentations": 0, "accepted": 0, "overridden": 0})
    reasons: dict[tuple, dict[str, Any]] = {}
    for (_, service_id, topic, disposition), entry in presentations.items():
        day: date = entry["first"].date()
        row = daily[(day, service_id, topic, disposition)]
        row["served"] += entry["rows"]
        row["presentations"] += 1
        latest = entry["latest"]
        if latest is None or disposition != DISPOSITION_SHOWN:
            continue
        if latest.outcome == "accepted":
            row["accepted"] += 1
        elif latest.outcome == "overridden":
            row["overridden"] += 1
            triple = (latest.override_system, latest.override_code, latest.override_display)
            reason_key = hashlib.sha256("\x1f".join(p or "" for p in triple).encode()).hexdigest()
            reason = reasons.setdefault((day, service_id, topic, reason_key), {
                "override_system": triple[0], "override_code": triple[1], "override_display": triple[2],
                "count": 0})
            reason["count"] += 1
    daily_rows = [dict(zip(("day", "service_id", "topic", "disposition"), k, strict=True), **v)
                  for k, v in daily.items()]
    reason_rows = [dict(zip(("day", "service_id", "topic", "reason_key"), k, strict=True), **v)
                   for k, v in reasons.items()]
    return daily_rows, reason_rows


def _add(conn: Connection, table, rows: list[dict[str, Any]], counters: tuple[str, ...]) -> None:
    """Insert, or add to the counters of an existing row (atomic upsert on SQLite and PostgreSQL)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={name: table.c[name] + statement.excluded[name] for name in counters},
    )
    conn.execute(statement, rows)


def stored_rows(engine: Engine) -> dict[str, int]:
    """Row counts of the tables purge touches (for its summary and the tests)."""
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (served_cards, feedback, analytics_daily, analytics_reasons_daily, suppressions)}

