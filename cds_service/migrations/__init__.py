"""Database schema migrations (Alembic) and the lock that makes them safe from many instances at once.

One entry point, :func:`upgrade`, used by ``cds-service migrate`` and — when auto-migration is on — by
a worker at start-up whose lock-free check (:func:`schema_state`) found the schema behind
(``Store.create_schema``):

1. take the **migration lock**: on PostgreSQL a session-level advisory lock (:data:`LOCK_KEY`), held on
   the connection that runs the migration, so it is released by the server even if the migrating
   process is SIGKILLed; on SQLite an exclusive ``flock`` on ``<database file>.migrate-lock``;
2. inside the lock, read the revision in ``alembic_version`` and upgrade to head only if behind;
3. release the lock.

So running it twice, or from ten workers of five instances at the same moment, upgrades once and
turns every other call into a no-op. A database created before migrations existed (tables made by
``metadata.create_all``, no ``alembic_version``) is adopted: revision 0001 creates only what is
missing and stamps it.

A database at a revision this code does not know (a newer release already migrated it, and an older
instance restarts during a rolling upgrade) is left alone and counts as usable: migrations are written
expand/contract so that the previous release keeps working on the new schema (docs/deployment.md).
"""

from __future__ import annotations

import fcntl
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, MetaData, inspect, text

from ..write_lock import sqlite_file

log = logging.getLogger("cds_service.migrations")

MIGRATIONS_DIR = Path(__file__).resolve().parent

#: PostgreSQL advisory lock key held while migrating (64-bit; first 8 bytes of sha256("cds_service.migrations")).
LOCK_KEY = 0x150A_1C44_A40C_2A6A  # = 1516055305699207786
DEFAULT_LOCK_TIMEOUT = 120.0
VERSION_TABLE = "alembic_version"


class MigrationError(RuntimeError):
    """The schema could not be brought to the expected revision (message says why)."""


class MigrationLockTimeout(MigrationError):
    """Another process held the migration lock for longer than the timeout."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # revision in alembic_version; None: not under migration control (or empty)
    head: str  # latest revision this code knows

    @property
    def status(self) -> str:
        """``current`` (at head), ``behind`` (needs ``cds-service migrate``), ``ahead`` (migrated by
        a newer release: usable, never downgraded), or ``unversioned`` (no alembic_version yet)."""
        if self.current == self.head:
            return "current"
        if self.current is None:
            return "unversioned"
        return "behind" if _is_known(self.current) else "ahead"

    @property
    def usable(self) -> bool:
        return self.status in {"current", "ahead"}


def target_metadata() -> MetaData:
    """Every table the service owns (cds_service.tables), for autogenerate and drift checks."""
    from cds_service.tables import metadata

    return metadata


def alembic_config(connection: Connection | None = None, *, url: str | None = None,
                   output: IO[str] | None = None):
    """An Alembic Config pointing at this package (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config(output_buffer=output, stdout=output or io.StringIO(),
                    attributes={"connection": connection} if connection is not None else {})
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise MigrationError("no migration revisions found")
    return head


def _is_known(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _script().get_revision(revision) is not None
    except (CommandError, KeyError, ValueError):  # alembic's ResolutionError is a CommandError
        return False


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in ``alembic_version`` (None when the table is absent or empty).

    Read with plain SQL rather than through Alembic's MigrationContext: this runs on every worker
    start and readiness retry, and needs neither Alembic's import cost nor its log lines.
    """
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(versions) > 1:
        raise MigrationError(f"{VERSION_TABLE} holds several revisions {versions}: branched history")
    return versions[0] if versions else None


def schema_state(engine: Engine) -> SchemaState:
    """Read the revision (no lock, no change). Raises SQLAlchemyError when the database is down."""
    with engine.connect() as conn:
        current = current_revision(conn)
    return SchemaState(current, head_revision())


@contextmanager
def migration_lock(engine: Engine, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[Connection]:
    """Hold the migration lock; yields the connection to migrate with (PostgreSQL: the lock's own)."""
    deadline = time.monotonic() + timeout
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.connect() as conn:
            while not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar():
                conn.commit()
                if time.monotonic() > deadline:
                    raise MigrationLockTimeout(
                        f"another process held the migration lock (pg advisory lock {LOCK_KEY}) "
                        f"for more than {timeout:.0f} s"
                    )
                time.sleep(0.2)
            conn.commit()  # no transaction left open: Alembic begins its own
            try:
                yield conn
            finally:
                try:
                    if conn.in_transaction():
                        conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                    conn.commit()
                except Exception:  # noqa: BLE001 - connection lost: the server released the lock
                    log.warning("migration lock release failed; the server releases it with the session")
        return
    database = sqlite_file(engine.url)
    if not database:
        if dialect != "sqlite":
            log.warning("no migration lock for dialect %s: run migrations from one process only", dialect)
        with engine.connect() as conn:
            yield conn
        return
    lock_path = Path(database + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MigrationLockTimeout(
                        f"another process held {lock_path} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def upgrade(engine: Engine, *, timeout: float = DEFAULT_LOCK_TIMEOUT) -> tuple[str | None, str | None]:
    """Upgrade to head under the migration lock; returns (revision before, revision after).

    Idempotent and safe concurrently. A database at an unknown (newer) revision is left unchanged.
    Raises SQLAlchemyError when the database is unreachable, MigrationError otherwise.
    """
    from alembic import command

    head = head_revision()
    with migration_lock(engine, timeout) as conn:
        before = current_revision(conn)
        if conn.in_transaction():
            conn.commit()
        if before == head:
            return before, before
        if before is not None and not _is_known(before):
            log.warning("database schema is at revision %s, newer than this release (%s): left unchanged",
                        before, head)
            return before, before
        log.info("migrating database schema from %s to %s", before or "(none)", head)
        command.upgrade(alembic_config(conn), "head")
        if conn.in_transaction():
            conn.commit()
        after = current_revision(conn)
        if conn.in_transaction():
            conn.commit()
    if after != head:
        raise MigrationError(f"schema is at {after} after upgrading, expected {head}")
    return before, after


def offline_sql(url: str, output: IO[str]) -> None:
    """Write the SQL of a full upgrade for *url*'s dialect (for a DBA to review or run by hand)."""
    from alembic import command

    command.upgrade(alembic_config(url=url, output=output), "head", sql=True)
