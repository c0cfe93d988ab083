"""GCRA reservations taken by several OS processes against one Redis key."""

from __future__ import annotations

import multiprocessing
import threading
import time
from itertools import pairwise

import pytest
import redis

from massmailer.delivery.limits import RedisLimits, burst_for
from massmailer.delivery.providers.base import ProviderConfig
from tests import infra

pytestmark = pytest.mark.integration

RATE = 25.0
HORIZON = 1.0


def relay() -> ProviderConfig:
    return ProviderConfig("relay", "127.0.0.1", 2525, rate_per_second=RATE)


def _reserve_hard(prefix: str, seconds: float, start, results) -> None:
    """Reserve as fast as Redis answers for `seconds` (a child process); report every answer.

    The child passes its own clock (one host, one clock for all children), so each slot's time
    is exact: the call's `now` plus the wait it was given.
    """
    limits = RedisLimits(redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5), prefix=prefix)
    provider, slots, refused = relay(), [], 0
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = time.time()
        wait = limits.reserve_rate(provider, HORIZON, now=now)
        if wait is None:
            refused += 1
            time.sleep(0.005)
        else:
            slots.append((now, wait))
    results.put((slots, refused))


def _send_at_slots(prefix: str, seconds: float, start, results) -> None:
    """Four sender threads that reserve, sleep until their slot, then 'send' (a child process)."""
    limits = RedisLimits(redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5), prefix=prefix)
    provider, sent, lock = relay(), [], threading.Lock()
    start.wait()
    deadline = time.monotonic() + seconds

    def sender() -> None:
        while time.monotonic() < deadline:
            wait = limits.reserve_rate(provider, HORIZON)
            if wait is None:
                time.sleep(0.02)
                continue
            time.sleep(wait)
            with lock:
                sent.append(time.time())

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(sent)


def run_children(target, prefix: str, seconds: float, count: int) -> list:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(count), ctx.Queue()
    children = [
        ctx.Process(target=target, args=(prefix, seconds, start, results)) for _ in range(count)
    ]
    for child in children:
        child.start()
    answers = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
    return answers


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


def test_processes_reserving_together_get_distinct_evenly_spaced_slots_within_the_horizon(prefix):
    answers = run_children(_reserve_hard, prefix, seconds=2.0, count=3)

    taken = [(now, wait) for slots, _ in answers for now, wait in slots]
    assert all(slots for slots, _ in answers), "every process got slots"
    assert all(0.0 <= wait <= HORIZON for _, wait in taken)
    assert sum(refused for _, refused in answers) > 0, "the schedule reached the horizon"
    slot_times = sorted(now + wait for now, wait in taken)
    assert len(set(slot_times)) == len(slot_times)
    # Evenly spaced: one emission interval apart, but after the first burst and any moment all
    # three processes stalled at once (the schedule went idle: a new burst).
    gaps = [b - a for a, b in pairwise(slot_times)]
    on_interval = sum(1 for g in gaps if g == pytest.approx(1 / RATE, abs=1e-4))
    assert on_interval >= 0.9 * len(gaps), sorted(gaps)[:10]
    span = slot_times[-1] - slot_times[0]
    assert 0.95 * RATE <= (len(slot_times) - 1) / span <= 1.15 * RATE
    print(
        f"{len(slot_times)} slots, {on_interval}/{len(gaps)} gaps on the interval, "
        f"at most {most_in_one_second(slot_times)} in a second"
    )
    assert most_in_one_second(slot_times) <= RATE + burst_for(RATE)


def test_senders_in_two_processes_use_the_shared_rate_in_full_and_no_more(prefix):
    seconds = 4.0
    answers = run_children(_send_at_slots, prefix, seconds=seconds, count=2)

    sent = sorted(t for times in answers for t in times)
    assert all(answers), "both processes sent"
    # Sends began at once and ended by the deadline plus at most one horizon of booked slots.
    rate = len(sent) / (sent[-1] - sent[0])
    print(f"{len(sent)} sends in {sent[-1] - sent[0]:.2f} s: {rate:.1f}/s against {RATE:g}/s")
    assert 0.85 * RATE <= rate <= 1.15 * RATE
    # A send happens at its slot or later; a loaded machine's late wake-ups may bunch a few.
    assert most_in_one_second(sent) <= RATE + burst_for(RATE) + 3
