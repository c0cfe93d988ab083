"""The per-process buffer of a fast schedule's slots (pure: a fake store and clock)."""

from __future__ import annotations

import pytest

from massmailer.delivery.limits.prefetch import MAX_BATCH, STALE_SECONDS, SlotBuffer, batch_size
from massmailer.delivery.providers.base import ProviderConfig


class FakeStore:
    """Hands out slots every `interval` seconds from t=0, as a GCRA schedule would."""

    def __init__(self, clock, interval: float) -> None:
        self.clock, self.interval, self.calls, self.next_slot = clock, interval, [], 0.0

    def reserve_many(self, provider, horizon, count):
        self.calls.append(count)
        now = self.clock()
        waits = []
        for _ in range(count):
            slot = max(self.next_slot, now)
            if slot - now > horizon:
                break
            waits.append(slot - now)
            self.next_slot = slot + self.interval
        return waits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fast(rate: float = 2000.0) -> ProviderConfig:
    return ProviderConfig(name="fast", host="127.0.0.1", port=25, rate_per_second=rate)


@pytest.mark.parametrize(
    ("rate", "size"),
    [(None, 1), (25, 1), (399, 1), (400, 2), (2000, 10), (100_000, MAX_BATCH)],
)
def test_a_batch_is_a_few_milliseconds_of_the_rate(rate, size):
    assert batch_size(rate) == size


def test_one_store_call_serves_a_batch_of_sends_in_schedule_order():
    clock = Clock()
    store = FakeStore(clock, interval=0.0005)
    buffer = SlotBuffer(store.reserve_many, clock)

    waits = [buffer.reserve(fast(), 1.0) for _ in range(10)]

    assert store.calls == [10]
    assert waits == [pytest.approx(0.0005 * i) for i in range(10)]
    buffer.reserve(fast(), 1.0)
    assert store.calls == [10, 10]


def test_slots_left_unused_past_their_time_lapse_instead_of_being_spent_late():
    clock = Clock()
    store = FakeStore(clock, interval=0.0005)
    buffer = SlotBuffer(store.reserve_many, clock)
    assert buffer.reserve(fast(), 1.0) == 0.0

    clock.now = 0.0045 + STALE_SECONDS + 0.001  # every spare slot is now too old
    assert buffer.reserve(fast(), 1.0) == 0.0  # a fresh slot from the store

    assert store.calls == [10, 10]


def test_a_spare_slot_beyond_the_callers_horizon_is_kept_and_refuses():
    clock = Clock()
    store = FakeStore(clock, interval=0.05)  # a throttled schedule: slots 50 ms apart
    buffer = SlotBuffer(store.reserve_many, clock)
    assert buffer.reserve(fast(), 1.0) == 0.0

    assert buffer.reserve(fast(), 0.01) is None  # the next spare one is 50 ms off
    assert buffer.reserve(fast(), 1.0) == pytest.approx(0.05)
    assert store.calls == [10]


def test_an_empty_answer_refuses():
    clock = Clock()
    buffer = SlotBuffer(lambda provider, horizon, count: [], clock)
    assert buffer.reserve(fast(), 1.0) is None
