"""Persistence of served cards and clinician feedback (SQLAlchemy Core; SQLite or PostgreSQL).

Served cards are recorded so feedback joins to the card it answers and acceptance/override rates
can be reported per topic. No patient identifier is stored: at most a keyed HMAC of the patient id
(only when a key is configured), which lets analytics count distinct patients without revealing them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Store:
    def __init__(self, url: str, patient_hash_key: str | None = None):
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
        self._schema_ready = False

    def create_schema(self) -> bool:
        """Create missing tables; False (not an exception) when the database is down at start-up,
        so the service still answers hooks and creates the schema once the database is back."""
        try:
            metadata.create_all(self.engine)
        except SQLAlchemyError:
            self._schema_ready = False
            return False
        self._schema_ready = True
        return True

    def _ensure_schema(self) -> None:
        if not self._schema_ready and not self.create_schema():
            raise StoreUnavailable("database unreachable")

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
        return self._schema_ready or self.create_schema()

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
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
