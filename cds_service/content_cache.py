"""Reuse of work done on identical inputs, within one process, for a couple of minutes (issue 16).

An EHR sends the same chart again and again within one ordering session: the CDS Hooks sandbox, like
EHRs, sends order-select at every change of the order (study chosen, each reason added) with the same
prefetch, then order-sign with it again. Two things depend only on content that repeats there, and the
hook engine keeps them in a :class:`ContentCache` each:

* the **facts** built from the patient's data (validating the relevant FHIR resources, reading the
  episode, red flags, history: most of a hook call's clinical work), keyed by the patient data exactly
  as received plus the evaluation day and the site zone;
* the **rendered card** of a Decision (Jinja in a sandbox: the largest single cost left), keyed by the
  Decision and the record's missing keys; every hit gets fresh card and suggestion uuids.

What it is and is not:

* keyed by a BLAKE2b digest of the inputs serialised by orjson exactly as given: identical bytes mean
  identical inputs, a different key order is only a miss;
* in memory, per process (never persisted, never shared between processes), bounded (``max_entries``,
  least recently used out first) and short-lived (``ttl_seconds``, 120 s by default: about one ordering
  session);
* nothing about the patient is logged; the digest identifies content only inside this process;
* cached values are read-only for every reader (the rules never modify facts; cards are copied).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 256
DEFAULT_TTL_SECONDS = 120.0


def content_key(*parts: Any) -> bytes:
    """A digest of parts exactly as given (no key sorting: same bytes, same key).

    Dicts, lists, tuples, strings, numbers, dates, enums and dataclasses are serialised by orjson;
    anything else raises ``TypeError`` (never a lossy ``str()``): the caller then works uncached."""
    digest = hashlib.blake2b(digest_size=20)
    try:
        for part in parts:
            digest.update(orjson.dumps(part))
            digest.update(b"\x1e")
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"not a content key: {exc}") from exc
    return digest.digest()


class ContentCache:
    """A thread-safe, bounded, time-limited map from a content key to a value built once."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value stored under *key* if it is younger than the TTL, else ``build()`` (stored)."""
        if self.max_entries <= 0 or self.ttl_seconds <= 0:
            return build()
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry[0] < self.ttl_seconds:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]  # type: ignore[no-any-return]
            self.misses += 1
        value = build()  # outside the lock: two threads missing at once both build, both correct
        with self._lock:
            self._entries[key] = (self._clock(), value)
            self._entries.move_to_end(key)
            self._expire(self._clock())
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _expire(self, now: float) -> None:
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        while self._entries:
            key, (stored, _) = next(iter(self._entries.items()))
            if now - stored < self.ttl_seconds:
                break
            del self._entries[key]
