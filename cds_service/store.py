"""Persistence of served cards and clinician feedback (SQLAlchemy Core; SQLite or PostgreSQL).

Served cards are recorded so feedback joins to the card it answers and acceptance/override rates
can be reported per topic. No patient identifier is stored: at most a keyed HMAC of the patient id
(only when a key is configured), which lets analytics count distinct patients without revealing them.

The schema is owned by the Alembic migrations in cds_service.migrations (``cds-service migrate``). The
tables below are what the code reads and writes; a change here needs a new migration revision (the
drift test in tests/cluster/test_migrations.py fails until there is one). At start-up each worker
checks the schema revision (one SELECT); with ``auto_migrate`` (the default) a database that is behind
is upgraded under the migration lock, which is safe from any number of workers and instances, so a
development checkout needs no step. Production runs ``cds-service migrate`` as an explicit release
step, after which this check finds nothing to do. With ``auto_migrate=False`` a worker never changes
the schema and reports not-ready until the schema is at a revision it can use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("cds_service.store")

metadata = MetaData()

served_cards = Table(
    "served_cards",
    metadata,
    Column("card_uuid", String(64), primary_key=True),
    Column("service_id", String(100), nullable=False),
    Column("hook", String(50), nullable=False),
    Column("hook_instance", String(200), nullable=False),
    Column("topic", String(50), nullable=False),
    Column("indicator", String(20), nullable=False),
    Column("suggestion_uuids", Text, nullable=False, default="[]"),
    Column("patient_hash", String(64)),
    Column("served_at", DateTime(timezone=True), nullable=False),
    Index("ix_served_cards_served_at", "served_at"),
    Index("ix_served_cards_topic", "topic"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(200), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("accepted_suggestions", Text, nullable=False, default="[]"),
    Column("override_system", String(300)),
    Column("override_code", String(100)),
    Column("override_display", String(300)),
    Column("user_comment", Text),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("known_card", Boolean, nullable=False),
    Column("flag", String(100)),
    Index("ix_feedback_card_uuid", "card_uuid"),
    Index("ix_feedback_received_at", "received_at"),
)


class StoreUnavailable(Exception):
    """The database cannot be reached; callers answer 503 rather than a false success."""


@dataclass(frozen=True)
class ServedCard:
    card_uuid: str
    service_id: str
    hook: str
    hook_instance: str
    topic: str
    indicator: str
    suggestion_uuids: tuple[str, ...]


def _parse_timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    # stored in UTC: SQLite drops offsets, so "10:00+02:00" must become 08:00Z before it is written
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: How long a starting worker waits for another process's migration before giving up (it then reports
#: not-ready and checks again on the next readiness probe or write, without waiting).
STARTUP_MIGRATION_WAIT_SECONDS = 10.0


class Store:
    def __init__(self, url: str, patient_hash_key: str | None = None, *, auto_migrate: bool = True):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kwargs.update(pool_size=5, max_overflow=5, connect_args={"connect_timeout": 3})
        elif url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._hash_key = patient_hash_key.encode() if patient_hash_key else None
        self.auto_migrate = auto_migrate
        self._schema_ready = False
        #: last known schema status: "current" or "ahead" (usable); "behind", "unversioned" (migration
        #: needed), "unreachable", "migrating-elsewhere", "migration-failed", "invalid"; "unknown" before
        #: the first check
        self.schema_status = "unknown"

    def create_schema(self, wait: float = STARTUP_MIGRATION_WAIT_SECONDS) -> bool:
        """Make sure the schema is usable: at the latest revision, upgrading it under the migration lock
        when behind and ``auto_migrate`` is on. False (not an exception) when it is not usable — database
        down, schema behind without auto-migration, another process still migrating after ``wait``
        seconds, or a failed migration — so the service still answers hooks and checks again on the
        next readiness probe or write."""
        from . import migrations

        try:
            state = migrations.schema_state(self.engine)
        except SQLAlchemyError:
            return self._schema_outcome("unreachable")
        except migrations.MigrationError as exc:
            return self._schema_outcome("invalid", str(exc))
        if not state.usable and self.auto_migrate:
            try:
                migrations.upgrade(self.engine, timeout=wait)
                state = migrations.schema_state(self.engine)
            except migrations.MigrationLockTimeout:
                return self._schema_outcome("migrating-elsewhere")
            except (SQLAlchemyError, migrations.MigrationError) as exc:
                return self._schema_outcome("migration-failed", f"{type(exc).__name__}: {exc}"[:500])
        if not state.usable:
            return self._schema_outcome(
                state.status, f"schema at {state.current or 'no revision'}, this release needs {state.head}: "
                "run `cds-service migrate`")
        return self._schema_outcome(state.status)

    def _schema_outcome(self, status: str, problem: str | None = None) -> bool:
        """Record the schema status; log a problem once per change of status, not on every probe."""
        ready = status in {"current", "ahead"}
        if not ready and status != "unreachable" and status != self.schema_status:
            log.error("database schema not usable", extra={"schema_status": status, "error": problem})
        self.schema_status = status
        self._schema_ready = ready
        return ready

    def _ensure_schema(self) -> None:
        if not self._schema_ready and not self.create_schema(wait=0):
            raise StoreUnavailable(f"database schema {self.schema_status}")

    def patient_hash(self, patient_id: str) -> str | None:
        if not self._hash_key:
            return None
        return hmac.new(self._hash_key, patient_id.encode(), hashlib.sha256).hexdigest()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return self._schema_ready or self.create_schema(wait=0)

    def record_served(self, cards: Iterable[ServedCard], patient_id: str | None, now: datetime) -> None:
        rows = [
            {
                "card_uuid": card.card_uuid,
                "service_id": card.service_id,
                "hook": card.hook,
                "hook_instance": card.hook_instance,
                "topic": card.topic,
                "indicator": card.indicator,
                "suggestion_uuids": json.dumps(list(card.suggestion_uuids)),
                "patient_hash": self.patient_hash(patient_id) if patient_id else None,
                "served_at": now,
            }
            for card in cards
        ]
        if not rows:
            return
        self._ensure_schema()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(served_cards), rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc

    def record_feedback(self, service_id: str, items: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """Store every item; unknown cards are kept and flagged, never rejected."""
        self._ensure_schema()
        try:
            with self.engine.begin() as conn:
                uuids = [item["card"] for item in items]
                known = {
                    row.card_uuid: row
                    for row in conn.execute(
                        select(served_cards.c.card_uuid, served_cards.c.service_id, served_cards.c.suggestion_uuids)
                        .where(served_cards.c.card_uuid.in_(uuids))
                    )
                }
                rows = []
                for item in items:
                    card = known.get(item["card"])
                    flag = None
                    if card is None:
                        flag = "unknown-card"
                    elif card.service_id != service_id:
                        flag = "service-mismatch"
                    else:
                        offered = set(json.loads(card.suggestion_uuids))
                        accepted = {s["id"] for s in item.get("acceptedSuggestions", [])}
                        if accepted - offered:
                            flag = "unknown-suggestion"
                    reason = (item.get("overrideReason") or {}).get("reason") or {}
                    rows.append(
                        {
                            "service_id": service_id,
                            "card_uuid": item["card"],
                            "outcome": item["outcome"],
                            "accepted_suggestions": json.dumps(
                                [s["id"] for s in item.get("acceptedSuggestions", [])]
                            ),
                            "override_system": reason.get("system"),
                            "override_code": reason.get("code"),
                            "override_display": reason.get("display"),
                            "user_comment": (item.get("overrideReason") or {}).get("userComment"),
                            "outcome_timestamp": _parse_timestamp(item["outcomeTimestamp"]),
                            "received_at": now,
                            "known_card": card is not None,
                            "flag": flag,
                        }
                    )
                conn.execute(insert(feedback), rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc
        return [{"card": r["card_uuid"], "knownCard": r["known_card"], **({"flag": r["flag"]} if r["flag"] else {})}
                for r in rows]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # Under WAL, NORMAL syncs at checkpoints, not on every commit: a power cut may lose the last
    # served-card rows but never corrupts the file; the fsync per hook call was the largest latency tail.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
