"""The compute gate (compute_gate.py): one holder, arrival order, released around waits, bounded waiting."""

from __future__ import annotations

import threading
import time

from prometheus_client import REGISTRY

from cds_service.compute_gate import ComputeGate


def _overflows() -> float:
    return REGISTRY.get_sample_value("cds_compute_gate_overflows_total") or 0.0


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_waiters_get_the_gate_in_arrival_order():
    gate = ComputeGate(wait_limit=10)
    order: list[int] = []
    gate.acquire()

    def waiter(n: int) -> None:
        with gate.turn():
            order.append(n)

    threads = []
    for n in range(5):
        thread = threading.Thread(target=waiter, args=(n,))
        thread.start()
        _wait_for(lambda n=n: len(gate._waiters) == n + 1)  # queued in this order
        threads.append(thread)
    gate.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert not gate._busy


def test_only_one_holder_at_a_time_under_contention():
    gate = ComputeGate(wait_limit=0.002)  # tiny limit: many overflows race with hand-overs
    inside = 0
    most = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal inside, most
        for _ in range(300):
            if gate.acquire():
                with lock:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0001)
                with lock:
                    inside -= 1
                gate.release()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert most == 1
    assert not gate._busy and not gate._waiters  # nothing left held or queued


def test_released_lets_a_waiter_compute_and_queues_again_behind_it():
    gate = ComputeGate(wait_limit=10)
    events: list[str] = []
    in_io = threading.Event()
    io_done = threading.Event()

    def io_call() -> None:
        with gate.turn():
            events.append("io: computing")
            with gate.released():
                in_io.set()
                io_done.wait(5)
            events.append("io: computing again")

    def compute_call() -> None:
        with gate.turn():
            events.append("compute: start")
            io_done.set()  # the I/O finishes while this call holds the gate
            time.sleep(0.05)
            events.append("compute: end")

    first = threading.Thread(target=io_call)
    first.start()
    assert in_io.wait(5)
    second = threading.Thread(target=compute_call)
    second.start()
    first.join(5)
    second.join(5)
    assert events == ["io: computing", "compute: start", "compute: end", "io: computing again"]


def test_released_outside_the_gate_does_nothing():
    gate = ComputeGate(wait_limit=10)
    with gate.released():
        assert not gate._busy
    assert not gate._busy and not gate.held_here()


def test_a_call_waits_at_most_the_limit_then_goes_ahead_without_the_gate():
    gate = ComputeGate(wait_limit=0.05)
    before = _overflows()
    gate.acquire()  # a long call holds the gate
    waited: list[float] = []
    held: list[bool] = []

    def late() -> None:
        started = time.monotonic()
        with gate.turn():
            waited.append(time.monotonic() - started)
            held.append(gate.held_here())

    thread = threading.Thread(target=late)
    thread.start()
    thread.join(5)
    assert 0.045 <= waited[0] < 1.0
    assert held == [False]
    assert _overflows() == before + 1
    assert gate.held_here() and gate._busy  # the overflowing call did not release the holder's gate
    gate.release()
    assert not gate._busy


def test_an_exception_inside_a_turn_frees_the_gate():
    gate = ComputeGate(wait_limit=10)
    try:
        with gate.turn():
            raise ValueError("boom")
    except ValueError:
        pass
    assert not gate._busy and not gate.held_here()


def test_a_call_back_from_io_goes_ahead_of_calls_that_have_not_started():
    gate = ComputeGate(wait_limit=10)
    order: list[str] = []
    in_io = threading.Event()
    io_done = threading.Event()

    def io_call() -> None:
        with gate.turn():
            with gate.released():
                in_io.set()
                io_done.wait(5)
            order.append("back from I/O")

    def new_call() -> None:
        with gate.turn():
            order.append("new call")

    first = threading.Thread(target=io_call)
    first.start()
    assert in_io.wait(5)
    gate.acquire()  # another call computes meanwhile
    late = threading.Thread(target=new_call)
    late.start()
    _wait_for(lambda: len(gate._waiters) == 1)  # a new call queued first...
    io_done.set()
    _wait_for(lambda: len(gate._waiters) == 2)  # ...then the I/O finished
    gate.release()
    first.join(5)
    late.join(5)
    assert order == ["back from I/O", "new call"]
