"""Schema migrations: explicit, idempotent, safe from many processes at once, on SQLite and PostgreSQL.

PostgreSQL cases use a fresh database per test on the shared server (CDS_TEST_POSTGRES_URL): creating a
database does not disturb other tests; nothing here restarts that server.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cds_service import migrations
from cds_service.auth import jwt_replay
from cds_service.store import ServedCard, Store, StoreUnavailable, feedback, metadata, served_cards

from .conftest import run_migrate_concurrently
from .harness import CLI

TABLES = {"served_cards", "feedback", "jwt_replay", "alembic_version"}
PG_ADMIN_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_database() -> Iterator[str]:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"cds_migr_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests ({PG_ADMIN_URL}): {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    return request.getfixturevalue("pg_database")


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_head_is_the_only_revision_chain():
    script = migrations._script()
    assert script.get_heads() == [migrations.head_revision()]


def test_migrate_from_several_processes_at_once_upgrades_once(database_url):
    results = run_migrate_concurrently(database_url, processes=4)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    outputs = [r.stdout for r in results]
    assert sum("upgraded from none to" in out for out in outputs) == 1, outputs
    assert sum("nothing to do" in out for out in outputs) == 3, outputs
    assert TABLES <= _tables(database_url)


def test_workers_starting_at_once_on_an_empty_database_all_become_ready(database_url):
    """Auto-migration at start-up (development default): 6 workers race; one migrates, all are ready."""
    stores = [Store(database_url) for _ in range(6)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def start(store: Store) -> None:
        barrier.wait()
        results.append(store.create_schema())

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True] * len(stores)
    assert {s.schema_status for s in stores} == {"current"}
    with stores[0].engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [
            migrations.head_revision()]
    for store in stores:
        store.engine.dispose()


def test_migrated_schema_matches_the_code(database_url):
    """Drift check: a table changed in store.py or auth/replay.py without a migration revision fails here."""
    store = Store(database_url)
    migrations.upgrade(store.engine)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), migrations.target_metadata())
    store.engine.dispose()
    assert diff == []


def test_a_database_made_by_create_all_is_adopted_with_its_data(database_url):
    """Deployments from before migrations: tables exist, no alembic_version. Rows survive."""
    engine = sa.create_engine(database_url)
    metadata.create_all(engine)  # every table, as start-up used to make them (test only: never in the package)
    with engine.begin() as conn:
        conn.execute(sa.insert(served_cards), [{
            "card_uuid": "c-1", "service_id": "s", "hook": "patient-view", "hook_instance": "h", "topic": "t",
            "indicator": "info", "suggestion_uuids": "[]", "served_at": datetime.now(UTC)}])
    engine.dispose()
    store = Store(database_url)
    assert migrations.schema_state(store.engine).status == "unversioned"
    assert migrations.upgrade(store.engine) == (None, migrations.head_revision())
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(served_cards)).scalar_one() == 1
    assert migrations.upgrade(store.engine) == (migrations.head_revision(),) * 2  # idempotent
    store.engine.dispose()


def test_without_auto_migrate_an_instance_never_touches_the_schema(database_url):
    """Production: the instance reports not-ready (feedback 503) until `cds-service migrate` has run."""
    store = Store(database_url, auto_migrate=False)
    assert store.create_schema() is False
    assert store.schema_status == "unversioned"
    assert store.ping() is False
    card = ServedCard("c-2", "s", "patient-view", "h", "t", "info", ())
    with pytest.raises(StoreUnavailable):
        store.record_served([card], None, datetime.now(UTC))
    assert "served_cards" not in _tables(database_url)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    check = subprocess.run([str(CLI), "migrate", "--check", "--database-url", database_url], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 3 and "unversioned" in check.stdout
    done = subprocess.run([str(CLI), "migrate", "--database-url", database_url], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    assert store.ping() is True  # no restart needed
    store.record_served([card], None, datetime.now(UTC))
    store.engine.dispose()


def test_a_newer_schema_is_left_alone_and_usable(database_url):
    """Rolling upgrade: the new release migrated; an old instance restarting must neither fail nor
    try to downgrade."""
    store = Store(database_url)
    migrations.upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe0001'"))
    assert migrations.upgrade(store.engine) == ("f00dcafe0001", "f00dcafe0001")
    fresh = Store(database_url, auto_migrate=False)
    assert fresh.create_schema() is True and fresh.schema_status == "ahead"
    store.engine.dispose()
    fresh.engine.dispose()


def test_a_worker_does_not_wait_forever_for_someone_elses_migration(pg_database):
    holder = sa.create_engine(pg_database)
    with holder.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": migrations.LOCK_KEY}).scalar()
        conn.commit()
        store = Store(pg_database)
        with pytest.raises(migrations.MigrationLockTimeout):
            migrations.upgrade(store.engine, timeout=0.5)
        assert store.create_schema(wait=0.3) is False
        assert store.schema_status == "migrating-elsewhere"
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": migrations.LOCK_KEY})
        conn.commit()
    assert store.create_schema(wait=5) is True
    store.engine.dispose()
    holder.dispose()


def test_sqlite_lock_file_serialises_migrators(tmp_path):
    url = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    store = Store(url)
    with migrations.migration_lock(store.engine, timeout=1):
        other = Store(url)
        with pytest.raises(migrations.MigrationLockTimeout):
            migrations.upgrade(other.engine, timeout=0.3)
    assert migrations.upgrade(other.engine)[1] == migrations.head_revision()
    assert (tmp_path / "cds.sqlite3.migrate-lock").exists()


def test_offline_sql_creates_every_table():
    out = io.StringIO()
    migrations.offline_sql("postgresql+psycopg://reviewer@db.example/cds", out)
    sql = out.getvalue()
    for table in ("served_cards", "feedback", jwt_replay.name, "alembic_version"):
        assert f"CREATE TABLE {table}" in sql
    assert "CREATE INDEX ix_jwt_replay_expires_at" in sql


def test_the_replay_table_is_the_one_tables_defines():
    """The migration imports jwt_replay from cds_service.tables (its one definition) instead of repeating it."""
    source = (migrations.MIGRATIONS_DIR / "versions" / "0001_initial.py").read_text(encoding="utf-8")
    assert "from cds_service.tables import jwt_replay" in source
    assert '"jwt_replay"' not in source
    assert feedback.name in source


def test_one_metadata_holds_every_table_and_only_migrations_create_them():
    """Issue 11 item 3: one MetaData (cds_service.tables) that the migrations use; no create_all elsewhere."""
    from pathlib import Path

    from cds_service import tables

    assert migrations.target_metadata() is tables.metadata
    assert {"served_cards", "feedback", "jwt_replay", "analytics_daily", "analytics_reasons_daily",
            "suppressions"} == set(tables.metadata.tables)
    assert metadata is tables.metadata  # the store re-exports it, does not define its own
    package = Path(migrations.__file__).resolve().parent.parent
    creators = [str(p.relative_to(package)) for p in package.rglob("*.py")
                if "migrations" not in p.parts and (".create_all(" in p.read_text(encoding="utf-8")
                                                   or "MetaData()" in p.read_text(encoding="utf-8"))]
    assert creators == ["tables.py"] or sorted(creators) == ["tables.py"], creators


def test_a_branched_version_table_is_reported_not_guessed(tmp_path):
    url = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    store = Store(url)
    migrations.upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('f00dcafe0002')"))
    fresh = Store(url)
    assert fresh.create_schema() is False and fresh.schema_status == "invalid"
    with pytest.raises(migrations.MigrationError, match="several revisions"):
        migrations.upgrade(fresh.engine)
