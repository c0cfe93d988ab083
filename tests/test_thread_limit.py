"""The sender-thread limit follows the queueing the threads cause, and the pool keeps to it."""

from __future__ import annotations

import threading
import time

import pytest

from massmailer.delivery import thread_limit
from massmailer.delivery.sender_threads import SenderThreads
from massmailer.delivery.thread_limit import ThreadLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def streams(limit: ThreadLimit, clock: Clock, pace: dict[str, float], intervals: int) -> None:
    """Each interval, one 16-message stream per provider at its pace (seconds a message)."""
    for _ in range(intervals):
        clock.now += thread_limit.INTERVAL_SECONDS
        for provider, seconds in pace.items():
            limit.note_stream(provider, 16, seconds * 15)


def test_replies_at_their_best_pace_keep_every_thread() -> None:
    clock = Clock()
    limit = ThreadLimit(64, 16, monotonic=clock)
    streams(limit, clock, {"far": 0.020}, 50)
    assert limit.limit == 64


def test_threads_that_queue_for_each_other_are_cut_to_the_floor_and_come_back() -> None:
    clock = Clock()
    limit = ThreadLimit(64, 16, monotonic=clock)
    streams(limit, clock, {"near": 0.0002}, 3)  # idle: its best pace
    streams(limit, clock, {"near": 0.002}, 3)  # ten times slower: the threads queue
    assert 16 < limit.limit < 64
    streams(limit, clock, {"near": 0.002}, 20)
    assert limit.limit == 16
    streams(limit, clock, {"near": 0.0002}, 20)  # the load went away
    assert limit.limit == 64


def test_one_slow_provider_is_not_taken_for_contention() -> None:
    clock = Clock()
    limit = ThreadLimit(64, 16, monotonic=clock)
    streams(limit, clock, {"slowing": 0.020, "steady": 0.020}, 3)
    streams(limit, clock, {"slowing": 0.200, "steady": 0.021}, 20)
    assert limit.limit == 64


def test_a_pace_that_stays_higher_becomes_the_new_best_within_the_window() -> None:
    clock = Clock()
    limit = ThreadLimit(64, 16, monotonic=clock)
    streams(limit, clock, {"moved": 0.001}, 3)
    streams(limit, clock, {"moved": 0.010}, 10)
    assert limit.limit == 16
    clock.now += thread_limit.BEST_WINDOW_SECONDS  # the old best is forgotten
    streams(limit, clock, {"moved": 0.010}, 20)
    assert limit.limit == 64


def test_short_streams_say_nothing() -> None:
    clock = Clock()
    limit = ThreadLimit(64, 16, monotonic=clock)
    limit.note_stream("p", 16, 0.001 * 15)
    for _ in range(30):
        clock.now += thread_limit.INTERVAL_SECONDS
        assert limit.note_stream("p", thread_limit.MIN_STREAM - 1, 1.0) is None
    assert limit.limit == 64


def test_the_floor_is_never_above_the_ceiling() -> None:
    assert ThreadLimit(8, 16).floor == 8


def run_at_once(senders: SenderThreads, runs: int, timeout: float = 10.0) -> int:
    """Submit runs that each wait until `runs` are running; return the most seen at once."""
    lock = threading.Lock()
    state = {"running": 0, "most": 0}
    everyone = threading.Event()

    def run() -> None:
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            if state["running"] >= runs:
                everyone.set()
        everyone.wait(0.3)
        with lock:
            state["running"] -= 1

    futures = [senders.submit(run) for _ in range(runs)]
    for future in futures:
        future.result(timeout=timeout)
    return state["most"]


def test_a_burst_of_runs_goes_at_once_up_to_the_limit() -> None:
    senders = SenderThreads(64, 16)
    try:
        assert run_at_once(senders, 50) == 50  # not one thread left to take the burst alone
        senders.pace.limit = 16
        assert run_at_once(senders, 50) == 16
        senders.pace.limit = 64
        assert run_at_once(senders, 50) == 50
    finally:
        senders.shutdown()


def test_a_grown_limit_starts_threads_for_the_runs_waiting() -> None:
    clock = Clock()
    senders = SenderThreads(6, 2)
    senders.pace = ThreadLimit(6, 2, monotonic=clock)
    senders.pace.limit = 2
    release = threading.Event()
    started = threading.Semaphore(0)

    def run() -> None:
        started.release()
        release.wait(10)

    try:
        futures = [senders.submit(run) for _ in range(6)]
        assert started.acquire(timeout=5) and started.acquire(timeout=5)
        assert not started.acquire(timeout=0.3)  # the other four wait for the limit
        for _ in range(2):  # replies at their best pace: the limit grows, 2 to 6
            clock.now += thread_limit.INTERVAL_SECONDS
            senders.note_stream("p", 16, 0.015)
        assert senders.limit == 6
        for _ in range(4):
            assert started.acquire(timeout=5)
        release.set()
        for future in futures:
            future.result(timeout=5)
    finally:
        release.set()
        senders.shutdown()


def test_shutdown_lets_the_queued_runs_finish() -> None:
    senders = SenderThreads(2, 1)
    done = []
    futures = [senders.submit(lambda n=n: (time.sleep(0.01), done.append(n))) for n in range(10)]
    senders.shutdown()
    assert sorted(done) == list(range(10))
    assert all(f.done() for f in futures)


def test_a_run_that_raises_reports_it_on_its_future() -> None:
    senders = SenderThreads(2, 1)
    try:
        with pytest.raises(ZeroDivisionError):
            senders.submit(lambda: 1 / 0).result(timeout=5)
        assert senders.submit(lambda: 7).result(timeout=5) == 7
    finally:
        senders.shutdown()
