"""The compute gate: in a worker process, one hook call computes at a time; the others wait their turn.

Why (issue 16, measured): a worker runs the app on CDS_THREADS threads so that a request can compute
while another waits on the EHR's FHIR server. But when several of them compute, they share one
interpreter lock, and the hand-overs cost: the same order-select call took 1.8–2.0 ms of CPU on one
thread and 2.7–2.8 ms with four (bench/tail_probe.py), and the server's CPU per hook call fell by a
quarter with one thread. With the gate the threads take turns for the computing and keep overlapping
where it matters: a call gives the gate up while it waits on the network (:func:`released` around
the FHIR server and the JWKS load) and then takes the next turn, ahead of the calls that have not
started yet. Database writes keep the gate: they take a fraction of a millisecond, and releasing it
there made the tail worse (the call re-queued; bench/NOTES.md).

Fairness: waiters are served in arrival order, handed the gate directly. Head-of-line blocking is
bounded: a call that waited ``wait_limit`` seconds goes ahead without the gate (as without a gate:
sharing the interpreter lock), so one very large prefetch delays the calls behind it by at most that
much. Only the hook endpoints pass through it (``server.py``): health, metrics, the console and the
SMART app run as before.

Outside a gated call (command line, tests, the background writer) :func:`released` does nothing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


class ComputeGate:
    """A fair (first come, first served) mutex with a waiting limit; see the module docstring."""

    def __init__(self, wait_limit: float) -> None:
        self.wait_limit = wait_limit
        self._mutex = threading.Lock()
        self._busy = False
        self._waiters: deque[threading.Lock] = deque()
        self._local = threading.local()

    def held_here(self) -> bool:
        """True when this thread holds the gate."""
        return getattr(self._local, "held", False)

    def acquire(self, *, first: bool = False) -> bool:
        """Wait for the gate (at most ``wait_limit``); True when held, False when the wait ran out.

        *first*: queue ahead of the others (a call coming back from I/O: it only has to finish)."""
        with self._mutex:
            if not self._busy:
                self._busy = True
                self._local.held = True
                return True
            ticket = threading.Lock()
            ticket.acquire()
            if first:
                self._waiters.appendleft(ticket)
            else:
                self._waiters.append(ticket)
        if ticket.acquire(timeout=self.wait_limit):
            self._local.held = True  # handed over by release(): the gate stayed busy for us
            return True
        with self._mutex:
            try:
                self._waiters.remove(ticket)
            except ValueError:  # handed over between the timeout and here: ours after all
                self._local.held = True
                return True
        # imported here, not at the top: the server imports this module (through auth) before it has
        # created the multi-process metrics directory that every metric needs
        from .metrics import GATE_OVERFLOWS

        GATE_OVERFLOWS.inc()
        return False

    def release(self) -> None:
        """Give the gate to the first in the queue, or free it."""
        self._local.held = False
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._busy = False

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the gate for the block (or go ahead without it after ``wait_limit``)."""
        self.acquire()
        try:
            yield
        finally:
            if self.held_here():  # not if the wait ran out (here or in a released() block)
                self.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let the others compute while this thread waits on I/O; then take the next turn, ahead of the
        calls that have not started (finishing a started call first keeps its latency, and the tail, short)."""
        if not self.held_here():
            yield
            return
        self.release()
        try:
            yield
        finally:
            self.acquire(first=True)


#: The process's gate; the server sets its waiting limit from CDS_GATE_WAIT_MS (0: no gate).
GATE = ComputeGate(wait_limit=0.05)


def released() -> AbstractContextManager[None]:
    """``with released():`` around a blocking network wait (FHIR server, JWKS) inside a hook call."""
    return GATE.released()
