"""Persistence of served cards and clinician feedback (SQLAlchemy Core; SQLite or PostgreSQL).

Served cards are recorded so feedback joins to the card it answers and acceptance/override rates
can be reported per topic. No patient identifier is stored: at most a keyed HMAC of the patient id
(only when a key is configured), which lets analytics count distinct patients without revealing them.

Every served card is recorded with the client (issuer and tenant) it was served to: feedback from
another client is stored flagged ``issuer-mismatch`` and left out of analytics. Answers are ordered by
the time the server received them; the client's ``outcomeTimestamp`` is kept as data only.

The schema (cds_service.tables) is owned by the Alembic migrations in cds_service.migrations
(``cds-service migrate``). At start-up each worker
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
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from . import write_lock
from .errors import SettingsError
from .tables import DISPOSITION_SHOWN, feedback, metadata, served_cards, suppressions

__all__ = ["ServedCard", "Store", "StoreUnavailable", "SchemaNotMigrated", "feedback", "metadata", "served_cards"]

log = logging.getLogger("cds_service.store")


class StoreUnavailable(Exception):
    """The database cannot be reached; callers answer 503 rather than a false success."""


class SchemaNotMigrated(SettingsError):
    """Production start-up found a schema behind this release and auto-migration off."""


@dataclass(frozen=True)
class ServedCard:
    card_uuid: str
    service_id: str
    hook: str
    hook_instance: str
    topic: str
    indicator: str
    suggestion_uuids: tuple[str, ...]
    #: "ServiceRequest/abc" when the card is about one draft order (Decision.order_reference)
    order_reference: str | None = None
    encounter_id: str | None = None
    disposition: str = DISPOSITION_SHOWN


def _parse_timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    # stored in UTC: SQLite drops offsets, so "10:00+02:00" must become 08:00Z before it is written
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: How long a starting worker waits for another process's migration before giving up (it then reports
#: not-ready and checks again on the next readiness probe or write, without waiting).
STARTUP_MIGRATION_WAIT_SECONDS = 10.0
#: How long a SQLite connection waits for another's lock (busy handler; the WAL switch retries as long).
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: Feedback flags that analytics ignore (the answer cannot be attributed to the card's presentation).
EXCLUDED_FLAGS = ("service-mismatch", "issuer-mismatch")


class Store:
    def __init__(self, url: str, patient_hash_key: str | None = None, *, auto_migrate: bool = True):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if url.startswith("postgresql"):
            # a server restart or a proxy's idle cut leaves dead connections in the pool: test each on checkout
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 3})
        elif url.startswith("sqlite"):
            # a file cannot drop a connection: no ping (a query per checkout, ~15 % of a served-card write)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write_lock = write_lock.for_url(url)
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
        except SQLAlchemyError as exc:
            return self._schema_outcome("unreachable", type(getattr(exc, "orig", None) or exc).__name__)
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

    def require_migrated(self) -> None:
        """Production start-up: refuse a reachable database whose schema is behind (or absent).

        Without this an unmigrated production instance answers hooks but records nothing and answers
        feedback with 503. A database that is down is not refused (hooks need no database; /readyz
        reports it), nor is one another process is migrating right now."""
        if self.create_schema() or self.schema_status not in {"behind", "unversioned", "invalid"}:
            return
        raise SchemaNotMigrated(
            f"the database schema is {self.schema_status}: run `cds-service migrate` before starting the "
            "service (or set CDS_AUTO_MIGRATE=true to let instances migrate at start-up)")

    def _schema_outcome(self, status: str, problem: str | None = None) -> bool:
        """Record the schema status; log a problem once per change of status, not on every probe."""
        ready = status in {"current", "ahead"}
        if not ready and status != self.schema_status:
            if status == "unreachable":  # the exception type only: its message can quote the URL or a value
                log.warning("database unreachable", extra={"schema_status": status, "error_type": problem})
            else:
                log.error("database schema not usable", extra={"schema_status": status, "error": problem})
        self.schema_status = status
        self._schema_ready = ready
        return ready

    def ensure_schema(self) -> None:
        """Raise StoreUnavailable unless the schema is usable (migrating it only when auto_migrate is on)."""
        if not self._schema_ready and not self.create_schema(wait=0):
            raise StoreUnavailable(f"database schema {self.schema_status}")


    def patient_hash(self, patient_id: str) -> str | None:
        if not self._hash_key:
            return None
        return hmac.new(self._hash_key, patient_id.encode(), hashlib.sha256).hexdigest()

    def presentation_key(self, card: ServedCard) -> str:
        """One presentation = same service, topic and order within one encounter (or, without an
        encounter, one hook instance). Hashed (keyed when a key is set): the ids are not stored."""
        scope = f"encounter:{card.encounter_id}" if card.encounter_id else f"hook-instance:{card.hook_instance}"
        material = "\x1f".join((card.service_id, card.topic, scope, card.order_reference or "")).encode()
        if self._hash_key:
            return hmac.new(self._hash_key, material, hashlib.sha256).hexdigest()
        return hashlib.sha256(material).hexdigest()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return self._schema_ready or self.create_schema(wait=0)

    def record_served(self, cards: Iterable[ServedCard], patient_id: str | None, now: datetime, *,
                      issuer: str | None = None, tenant: str | None = None) -> None:
        """Record cards served (or, by disposition, withheld) to the client ``issuer``/``tenant``."""
        self.insert_served(self.served_rows(cards, patient_id, now, issuer=issuer, tenant=tenant))

    def served_rows(self, cards: Iterable[ServedCard], patient_id: str | None, now: datetime, *,
                    issuer: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        """The served_cards rows of one hook call (the patient id is hashed here, never stored)."""
        patient_hash = self.patient_hash(patient_id) if patient_id else None
        return [
            {
                "card_uuid": card.card_uuid,
                "service_id": card.service_id,
                "hook": card.hook,
                "hook_instance": card.hook_instance,
                "topic": card.topic,
                "indicator": card.indicator,
                "suggestion_uuids": json.dumps(list(card.suggestion_uuids)),
                "patient_hash": patient_hash,
                "served_at": now,
                "issuer": issuer,
                "tenant": tenant,
                "presentation_key": self.presentation_key(card),
                "disposition": card.disposition,
            }
            for card in cards
        ]

    def insert_served(self, rows: list[dict[str, Any]]) -> None:
        """Insert served_cards rows in one transaction (the served-card writer batches many hook calls)."""
        if not rows:
            return
        self.ensure_schema()
        try:
            with write_lock.holding(self._write_lock), self.engine.begin() as conn:
                conn.execute(insert(served_cards), rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc

    def record_feedback(self, service_id: str, items: list[dict[str, Any]], now: datetime, *,
                        issuer: str | None = None, tenant: str | None = None,
                        suppression_days: Mapping[tuple[str, str], int] | None = None) -> list[dict[str, Any]]:
        """Store every item; unknown cards and cards served to another client are kept and flagged,
        never rejected. ``suppression_days`` maps (topic, override reason code) to the days the topic
        is then withheld for the card's patient (needs the patient hash key)."""
        self.ensure_schema()
        try:
            with self.engine.begin() as conn:
                uuids = [item["card"] for item in items]
                known = {
                    row.card_uuid: row
                    for row in conn.execute(
                        select(served_cards.c.card_uuid, served_cards.c.service_id, served_cards.c.suggestion_uuids,
                               served_cards.c.issuer, served_cards.c.tenant, served_cards.c.topic,
                               served_cards.c.patient_hash)
                        .where(served_cards.c.card_uuid.in_(uuids))
                    )
                }
                rows, acks = [], []
                for item in items:
                    card = known.get(item["card"])
                    flag = _flag(card, item, service_id, issuer, tenant)
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
                            "issuer": issuer,
                            "tenant": tenant,
                        }
                    )
                    # Another client learns nothing about this client's cards: it hears "unknown card".
                    foreign = flag == "issuer-mismatch"
                    acks.append({"card": item["card"], "knownCard": card is not None and not foreign,
                                 **({"flag": "unknown-card" if foreign else flag} if flag else {})})
                    if (suppression_days and card is not None and flag is None and card.patient_hash
                            and item["outcome"] == "overridden"):
                        days = suppression_days.get((card.topic, reason.get("code") or ""))
                        if days:
                            _suppress(conn, card.patient_hash, card.topic, now + timedelta(days=days),
                                      reason.get("code"))
                conn.execute(insert(feedback), rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc
        return acks

    def suppressed_topics(self, patient_id: str, topics: Iterable[str], now: datetime) -> set[str]:
        """Topics withheld for this patient at ``now`` after an override (empty without a hash key).

        Raises StoreUnavailable when the database cannot answer: the caller then shows the cards
        (suppression is a comfort, never a reason to hide a card on doubt)."""
        patient_hash = self.patient_hash(patient_id)
        wanted = sorted(set(topics))
        if patient_hash is None or not wanted:
            return set()
        self.ensure_schema()
        try:
            with self.engine.connect() as conn:
                return set(conn.execute(
                    select(suppressions.c.topic).where(and_(
                        suppressions.c.patient_hash == patient_hash, suppressions.c.topic.in_(wanted),
                        suppressions.c.until > now))
                ).scalars())
        except SQLAlchemyError as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc


def _flag(card: Any, item: dict[str, Any], service_id: str, issuer: str | None, tenant: str | None) -> str | None:
    if card is None:
        return "unknown-card"
    if card.service_id != service_id:
        return "service-mismatch"
    if (card.issuer, card.tenant) != (issuer, tenant):
        return "issuer-mismatch"
    offered = set(json.loads(card.suggestion_uuids))
    accepted = {s["id"] for s in item.get("acceptedSuggestions", [])}
    return "unknown-suggestion" if accepted - offered else None


def _suppress(conn: Any, patient_hash: str, topic: str, until: datetime, reason_code: str | None) -> None:
    """Insert or extend (never shorten) the suppression of ``topic`` for this patient."""
    values = {"patient_hash": patient_hash, "topic": topic, "until": until, "reason_code": reason_code}
    dialect = conn.dialect.name
    if dialect in {"sqlite", "postgresql"}:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        statement = dialect_insert(suppressions).values(**values)
        conn.execute(statement.on_conflict_do_update(
            index_elements=[suppressions.c.patient_hash, suppressions.c.topic],
            set_={"until": statement.excluded.until, "reason_code": statement.excluded.reason_code},
            where=suppressions.c.until < statement.excluded.until,
        ))
        return
    current = conn.execute(select(suppressions.c.until).where(and_(
        suppressions.c.patient_hash == patient_hash, suppressions.c.topic == topic))).scalar()
    if current is None:
        conn.execute(insert(suppressions).values(**values))
    elif current < until:
        conn.execute(suppressions.update().where(and_(
            suppressions.c.patient_hash == patient_hash, suppressions.c.topic == topic)).values(**values))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        # Under WAL, NORMAL syncs at checkpoints, not on every commit: a power cut may lose the last
        # served-card rows but never corrupts the file; the fsync per hook call was the largest latency tail.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode (it stays so: later connections only read the mode).

    Switching needs the file to itself, and SQLite answers "database is locked" at once, without
    waiting out the busy timeout, when another connection holds a lock -- as when several workers
    open a new database together and one of them is migrating it. Retried here for up to the busy
    timeout, so that worker is not left "unreachable" (tests/cluster/test_migrations.py)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
