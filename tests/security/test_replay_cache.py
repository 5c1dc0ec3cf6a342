"""SqlReplayCache: first use wins atomically across engines (workers), expired rows go away.

Runs on SQLite always, and on PostgreSQL too when CDS_TEST_POSTGRES_URL names a scratch database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, inspect, select

from cds_service.auth import MemoryReplayCache, SqlReplayCache, jwt_replay

ISS = "https://ehr.example.org"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'replay.sqlite3'}"
        return
    url = request.getfixturevalue("postgres_url")  # a real server: fails loudly when absent
    engine = create_engine(url)
    SqlReplayCache.create_table(engine)
    with engine.begin() as conn:
        conn.execute(jwt_replay.delete())
    engine.dispose()
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    SqlReplayCache.create_table(engine)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(jwt_replay)).scalar_one())


def test_create_table_is_idempotent(engine: Engine) -> None:
    SqlReplayCache.create_table(engine)
    assert "jwt_replay" in inspect(engine).get_table_names()
    columns = {column["name"] for column in inspect(engine).get_columns("jwt_replay")}
    assert columns == {"issuer", "jti", "expires_at"}


def test_first_use_wins_and_issuers_are_separate(engine: Engine) -> None:
    cache = SqlReplayCache(engine)
    expires = time.time() + 300
    assert cache.remember(ISS, "jti-1", expires) is True
    assert cache.remember(ISS, "jti-1", expires) is False
    assert cache.remember("https://other.example", "jti-1", expires) is True
    assert cache.remember(ISS, "jti-2", expires) is True


def test_expired_rows_are_purged_opportunistically(engine: Engine) -> None:
    clock = FakeClock(1_000_000.0)
    cache = SqlReplayCache(engine, clock=clock, purge_interval=60)
    for index in range(5):
        assert cache.remember(ISS, f"old-{index}", clock.now + 10)
    assert _rows(engine) == 5
    clock.now += 30  # expired, but the purge interval has not elapsed: rows stay until the next purge
    cache.remember(ISS, "new-1", clock.now + 300)
    assert _rows(engine) == 6
    clock.now += 40
    cache.remember(ISS, "new-2", clock.now + 300)
    assert _rows(engine) == 2  # old-* purged, new-1 and new-2 remain


def test_an_expired_pair_may_be_used_again(engine: Engine) -> None:
    clock = FakeClock(2_000_000.0)
    cache = SqlReplayCache(engine, clock=clock, purge_interval=10_000)
    assert cache.remember(ISS, "recycled", clock.now + 10)
    clock.now += 20
    assert cache.remember(ISS, "recycled", clock.now + 300) is True
    assert cache.remember(ISS, "recycled", clock.now + 300) is False


def test_concurrent_workers_exactly_one_wins(database_url: str) -> None:
    """Eight 'workers', each with its own engine, race to use the same jti."""
    engines = [create_engine(database_url) for _ in range(8)]
    SqlReplayCache.create_table(engines[0])
    caches = [SqlReplayCache(engine) for engine in engines]
    barrier = threading.Barrier(len(caches))
    results: list[bool] = []
    lock = threading.Lock()
    expires = time.time() + 300

    def worker(cache: SqlReplayCache) -> None:
        barrier.wait()
        outcome = cache.remember(ISS, "contested", expires)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert sorted(results) == [False] * 7 + [True]


def test_memory_replay_cache() -> None:
    clock = FakeClock(1000.0)
    cache = MemoryReplayCache(clock=clock)
    assert cache.remember(ISS, "a", 1100) is True
    assert cache.remember(ISS, "a", 1100) is False
    clock.now = 1200
    assert cache.remember(ISS, "a", 1500) is True
