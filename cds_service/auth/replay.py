"""Replay protection: remember ``(iss, jti)`` until the token expires, so a captured token works once.

:class:`SqlReplayCache` is shared by every worker and instance (inserting is the atomic "first one
wins" test); :class:`MemoryReplayCache` is for tests and single-process development servers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cds_service import tables

from .model import log


class ReplayCache(Protocol):
    """Remembers (issuer, jti) pairs until ``expires_at`` (epoch seconds)."""

    def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record the pair; return False when it was already recorded (a replay)."""
        ...


#: The replay table, defined with every other table in cds_service.tables and created by the migrations.
jwt_replay = tables.jwt_replay


class SqlReplayCache:
    """Replay cache in a SQL table shared by every worker process and service instance.

    The primary key (issuer, jti) makes the database the arbiter: "INSERT … ON CONFLICT DO NOTHING"
    (SQLite, PostgreSQL; a plain INSERT caught on IntegrityError elsewhere) succeeds for exactly one
    caller, however many workers race. Rows expire at the token's exp (+ clock skew); expired rows are
    purged at most every ``purge_interval`` seconds per instance, so no scheduler is needed.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        purge_interval: float = 60.0,
        ensure_schema: Callable[[], Any] | None = None,
    ):
        self._engine = engine
        # the service passes its store's schema check (which honours CDS_AUTO_MIGRATE); alone, the
        # cache brings the schema up through the migrations on first use
        self._ensure_schema = ensure_schema or (lambda: self.create_table(engine))
        self._clock = clock
        self._purge_interval = purge_interval
        self._last_purge: float | None = None
        self._purge_lock = threading.Lock()
        self._table_ready = False

    @staticmethod
    def create_table(engine: Engine) -> None:
        """Bring the schema, ``jwt_replay`` with it, to the latest revision through the migrations
        (idempotent, locked): no table is created outside cds_service.migrations."""
        from cds_service import migrations

        migrations.upgrade(engine)

    def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
        if not self._table_ready:
            # The database may have been down at start-up: make sure the schema is there on first use.
            self._ensure_schema()
            self._table_ready = True
        now = self._clock()
        self._maybe_purge(now)
        row = {"issuer": issuer, "jti": jti, "expires_at": int(math.ceil(expires_at))}
        if self._insert(row):
            return True
        # The pair exists. If that row has expired (an issuer recycling jti values long after), it no
        # longer protects anything: delete it and compete for the insert again — still atomic.
        with self._engine.begin() as conn:
            stale = conn.execute(
                delete(jwt_replay).where(
                    jwt_replay.c.issuer == issuer, jwt_replay.c.jti == jti, jwt_replay.c.expires_at < now
                )
            ).rowcount
        return bool(stale) and self._insert(row)

    def purge(self, now: float | None = None) -> int:
        """Delete expired rows; returns how many. Called opportunistically by :meth:`remember`."""
        cutoff = self._clock() if now is None else now
        with self._engine.begin() as conn:
            return conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at < cutoff)).rowcount or 0

    def _maybe_purge(self, now: float) -> None:
        with self._purge_lock:
            if self._last_purge is not None and now - self._last_purge < self._purge_interval:
                return
            self._last_purge = now
        try:
            self.purge(now)
        except Exception:  # purge is housekeeping: never fail an authentication because of it
            log.warning("jwt_replay purge failed", exc_info=True, extra={"check": "jti-replay"})

    def _insert(self, row: dict[str, Any]) -> bool:
        dialect = self._engine.dialect.name
        if dialect in {"sqlite", "postgresql"}:
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            statement = dialect_insert(jwt_replay).values(**row).on_conflict_do_nothing()
            with self._engine.begin() as conn:
                if self._engine.dialect.insert_returning:
                    # RETURNING yields a row only when this caller inserted it; rowcount is not
                    # reliable here (psycopg 3 reports -1 for INSERT … ON CONFLICT DO NOTHING).
                    return conn.execute(statement.returning(jwt_replay.c.jti)).first() is not None
                return conn.execute(statement).rowcount == 1
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(jwt_replay).values(**row))
            return True
        except IntegrityError:
            return False


class MemoryReplayCache:
    """In-process replay cache for tests and single-process development servers only.

    Not shared between workers: with gunicorn (several processes) use :class:`SqlReplayCache`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def remember(self, issuer: str, jti: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {key: exp for key, exp in self._seen.items() if exp >= now}
            previous = self._seen.get((issuer, jti))
            if previous is not None and previous >= now:
                return False
            self._seen[(issuer, jti)] = expires_at
            return True

