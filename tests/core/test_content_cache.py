"""The per-process facts cache (issue 16): same answer, bounded size, time-limited, content-keyed."""

from __future__ import annotations

import threading

from cds_service.content_cache import ContentCache, content_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_hit_returns_what_was_built_without_building_again() -> None:
    cache = ContentCache(max_entries=4, ttl_seconds=60)
    builds: list[int] = []

    def build() -> dict[str, int]:
        builds.append(1)
        return {"value": len(builds)}

    first = cache.get_or_build(b"k", build)
    second = cache.get_or_build(b"k", build)
    assert second is first
    assert len(builds) == 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_size_is_bounded_least_recently_used_out_first() -> None:
    cache = ContentCache(max_entries=3, ttl_seconds=60)
    for key in ("a", "b", "c"):
        cache.get_or_build(key, lambda key=key: key.upper())
    cache.get_or_build("a", lambda: "rebuilt")  # a is now the most recently used
    cache.get_or_build("d", lambda: "D")  # evicts b, the least recently used
    assert len(cache) == 3
    assert cache.get_or_build("a", lambda: "rebuilt") == "A"
    assert cache.get_or_build("b", lambda: "rebuilt") == "rebuilt"


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = ContentCache(max_entries=8, ttl_seconds=30, clock=clock)
    assert cache.get_or_build("k", lambda: "old") == "old"
    clock.now += 29.9
    assert cache.get_or_build("k", lambda: "new") == "old"
    clock.now += 0.2
    assert cache.get_or_build("k", lambda: "new") == "new"


def test_expired_entries_are_dropped_when_others_are_stored() -> None:
    clock = Clock()
    cache = ContentCache(max_entries=8, ttl_seconds=10, clock=clock)
    cache.get_or_build("old", lambda: 1)
    clock.now += 11
    cache.get_or_build("new", lambda: 2)
    assert len(cache) == 1


def test_disabled_cache_always_builds() -> None:
    for cache in (ContentCache(max_entries=0), ContentCache(ttl_seconds=0)):
        assert cache.get_or_build("k", lambda: 1) == 1
        assert cache.get_or_build("k", lambda: 2) == 2
        assert len(cache) == 0


def test_content_key_is_equal_for_equal_bytes_and_differs_otherwise() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}
    resources = [{"resourceType": "Condition", "id": "c1", "code": {"text": "low back pain"}}]
    same = content_key(dict(patient), [dict(r) for r in resources], "2026-11-30")
    assert content_key(patient, resources, "2026-11-30") == same
    assert content_key(patient, resources, "2026-12-01") != same  # another evaluation day
    changed = [{**resources[0], "code": {"text": "sciatica"}}]
    assert content_key(patient, changed, "2026-11-30") != same
    assert content_key({**patient, "id": "p2"}, resources, "2026-11-30") != same
    assert len(same) == 20


def test_threads_share_one_cache_safely() -> None:
    cache = ContentCache(max_entries=16, ttl_seconds=60)
    results: list[tuple[int, int]] = []

    def work(n: int) -> None:
        for i in range(200):
            results.append((i % 20, cache.get_or_build(i % 20, lambda i=i: i % 20)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 800
    assert len(cache) <= 16
    assert all(key == value for key, value in results)  # never another key's value
