"""Rate limits, session caps and circuit breakers, against real Redis and the in-process backend."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from massmailer.delivery.limits import Limits, MemoryLimits, RedisLimits, burst_for
from massmailer.delivery.limits.policy import (
    gcra,
    gcra_headroom,
    gcra_reserve,
    seconds_to_next_utc_day,
    utc_day,
)
from massmailer.delivery.providers.base import ProviderConfig
from tests import infra

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a fixed clock for tests that pass `now`

MakeLimits = Callable[..., Limits]


def provider(name: str = "relay", **limits) -> ProviderConfig:
    return ProviderConfig(name=name, host="127.0.0.1", port=2525, **limits)


# ---- pure rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.5, 1.0), (1, 1.0), (10, 1.0), (50, 5.0), (1000, 100.0)]
)
def test_burst_is_a_tenth_of_a_second_but_at_least_one(rate, burst):
    assert burst_for(rate) == burst


@pytest.mark.parametrize(
    ("tat", "now", "rate", "admitted", "wait"),
    [
        pytest.param(0.0, 100.0, 10, True, 0.0, id="idle: admit"),
        pytest.param(100.1, 100.0, 10, False, 0.1, id="one interval ahead, burst 1: wait"),
        pytest.param(100.1, 100.1, 10, True, 0.0, id="after the interval: admit"),
        pytest.param(100.08, 100.0, 50, True, 0.0, id="burst 5, four used: admit"),
        pytest.param(100.1, 100.0, 50, False, 0.02, id="burst 5, all used: wait one interval"),
    ],
)
def test_gcra_table(tat, now, rate, admitted, wait):
    new_tat, waited = gcra(tat, now, rate)
    assert waited == pytest.approx(wait)
    assert (new_tat > tat) is admitted


@pytest.mark.parametrize(
    ("tat", "now", "rate", "horizon", "reserved"),
    [
        pytest.param(0.0, 100.0, 10, 0.0, (100.1, 0.0), id="idle: now"),
        pytest.param(100.1, 100.0, 10, 0.5, (100.2, 0.1), id="burst 1 used: one interval"),
        pytest.param(100.1, 100.0, 10, 0.05, None, id="beyond the horizon: nothing"),
        pytest.param(100.08, 100.0, 50, 0.0, (100.1, 0.0), id="burst 5, four used: now"),
        pytest.param(101.0, 100.0, 50, 1.0, (101.02, 0.92), id="booked 1 s ahead: 0.92 s"),
        pytest.param(99.0, 100.0, 50, 0.0, (100.02, 0.0), id="an old tat counts as now"),
    ],
)
def test_gcra_reserve_table(tat, now, rate, horizon, reserved):
    got = gcra_reserve(tat, now, rate, horizon)
    assert got == (None if reserved is None else pytest.approx(reserved))


@pytest.mark.parametrize(
    ("tat", "now", "rate", "headroom"),
    [(0.0, 100.0, 50, 5), (100.02, 100.0, 50, 4), (100.1, 100.0, 50, 0), (0.0, 100.0, 1, 1)],
)
def test_gcra_headroom_table(tat, now, rate, headroom):
    assert gcra_headroom(tat, now, rate) == headroom


def test_days_are_utc_dates():
    assert utc_day(T0) == 19675
    assert seconds_to_next_utc_day(T0) == pytest.approx(6400.0)
    assert seconds_to_next_utc_day(19676 * 86400.0) == 86400.0


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(infra.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def make_limits(request, prefix) -> Iterator[MakeLimits]:
    """Return a factory of handles on one shared state: a new Redis client each, or one object."""
    clients: list[redis.Redis] = []
    memory: dict[str, MemoryLimits] = {}

    def make(**settings) -> Limits:
        if request.param == "memory":
            return memory.setdefault("shared", MemoryLimits(**settings))
        clients.append(redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5))
        return RedisLimits(clients[-1], prefix=prefix, **settings)

    yield make
    for client in clients:
        client.close()


def run_together(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls on threads released at once; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---- rate ----------------------------------------------------------------------------------


def test_no_limit_always_admits(make_limits):
    limits, unlimited = make_limits(), provider()
    assert all(limits.try_acquire_rate(unlimited) == 0.0 for _ in range(200))


def test_gcra_admits_the_burst_then_asks_to_wait_one_interval(make_limits):
    limits, relay = make_limits(), provider(rate_per_second=50)
    assert [limits.try_acquire_rate(relay, now=T0) for _ in range(5)] == [0.0] * 5
    assert limits.try_acquire_rate(relay, now=T0) == pytest.approx(0.02, abs=1e-5)
    assert limits.try_acquire_rate(relay, now=T0 + 0.02) == 0.0
    assert limits.try_acquire_rate(relay, now=T0 + 0.02) > 0


def test_gcra_admits_the_rate_over_seconds_and_refuses_beyond(make_limits):
    # A clock of our own, stepping 5 ms at a time: a loaded machine cannot stall a poll loop here.
    limits, relay = make_limits(), provider(rate_per_second=40)
    steps = [T0 + i * 0.005 for i in range(400)]  # 2 s
    admitted = sum(
        1 for now in steps for _ in range(3) if limits.try_acquire_rate(relay, now=now) == 0.0
    )
    burst = burst_for(40)
    assert 40 * 2 <= admitted <= 40 * 2 + burst
    last = steps[-1]
    assert [limits.try_acquire_rate(relay, now=last) for _ in range(20)].count(0.0) == 0


def _hammer(prefix: str, relay: ProviderConfig, seconds: float, start, results) -> None:
    """Take sends from one provider as fast as allowed for `seconds`; report how many (a child)."""
    client = redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5)
    limits = RedisLimits(client, prefix=prefix)
    start.wait()
    admitted, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        wait = limits.try_acquire_rate(relay)
        if wait == 0.0:
            admitted += 1
        else:
            time.sleep(min(wait, 0.002))
    client.close()
    results.put(admitted)


@pytest.mark.integration
def test_two_processes_share_one_rate(prefix):
    rate, seconds = 100, 3.0
    relay = provider(rate_per_second=rate)
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_hammer, args=(prefix, relay, seconds, start, results)) for _ in range(2)
    ]
    for w in workers:
        w.start()
    counts = [results.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    assert all(c > 0 for c in counts), counts
    assert rate * seconds * 0.8 <= sum(counts) <= (rate * seconds + burst_for(rate)) * 1.1, counts


def test_daily_cap_waits_for_the_next_utc_day(make_limits):
    limits, relay = make_limits(), provider(rate_per_day=3)
    assert [limits.try_acquire_rate(relay, now=T0 + i) for i in range(3)] == [0.0] * 3
    assert limits.try_acquire_rate(relay, now=T0 + 10) == pytest.approx(6390.0)
    next_day = 19676 * 86400.0
    assert limits.try_acquire_rate(relay, now=next_day + 1) == 0.0


def test_rate_refusal_spends_nothing_of_the_daily_cap(make_limits):
    limits, relay = make_limits(), provider(rate_per_second=1, rate_per_day=2)
    assert limits.try_acquire_rate(relay, now=T0) == 0.0
    assert limits.try_acquire_rate(relay, now=T0) == pytest.approx(1.0)
    assert limits.try_acquire_rate(relay, now=T0 + 1) == 0.0
    assert limits.try_acquire_rate(relay, now=T0 + 2) == pytest.approx(6398.0)


# ---- reservations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "horizon", "waits"),
    [
        pytest.param({"rate_per_second": 25}, 0.11, [0, 0, 0.02, 0.06, 0.10, None], id="25/s"),
        pytest.param({"rate_per_second": 50}, 0.0, [0] * 5 + [None], id="burst 5, now only"),
        pytest.param({"rate_per_second": 1}, 2.5, [0, 1, 2, None], id="1/s, 2.5 s ahead"),
        pytest.param({}, 0.0, [0] * 5, id="no limit"),
        pytest.param({"rate_per_day": 2}, 0.0, [0] * 5, id="daily only: counted at send"),
    ],
)
def test_reservations_take_successive_slots_up_to_the_horizon(make_limits, limits, horizon, waits):
    store, relay = make_limits(), provider(**limits)
    taken = [store.reserve_rate(relay, horizon, now=T0) for _ in waits]
    assert taken == [w if w is None else pytest.approx(w, abs=1e-5) for w in waits]


@pytest.mark.parametrize(
    ("limits", "horizon", "count", "waits"),
    [
        pytest.param({"rate_per_second": 25}, 0.11, 8, [0, 0, 0.02, 0.06, 0.10], id="25/s"),
        pytest.param({"rate_per_second": 1}, 2.5, 2, [0, 1], id="fewer asked than fit"),
        pytest.param({}, 0.0, 3, [0] * 3, id="no limit"),
    ],
)
def test_many_slots_at_once_are_the_slots_one_by_one(make_limits, limits, horizon, count, waits):
    store, relay = make_limits(), provider(**limits)
    assert store.reserve_rate_many(relay, horizon, count, now=T0) == [
        pytest.approx(w, abs=1e-5) for w in waits
    ]
    # The schedule moved past them all: the next single slot comes after the last one.
    one = make_limits().reserve_rate(relay, horizon + 1, now=T0)
    if limits:
        assert one == pytest.approx(waits[-1] + 1 / limits["rate_per_second"], abs=1e-5)


def test_many_slots_take_nothing_once_the_daily_cap_is_spent(make_limits):
    store, relay = make_limits(), provider(rate_per_second=100, rate_per_day=1)
    assert store.take_daily(relay, now=T0) == 0.0
    assert store.reserve_rate_many(relay, 1.0, 5, now=T0) == []


def test_reservers_racing_get_the_schedule_in_some_order(make_limits):
    handles, relay = [make_limits() for _ in range(8)], provider(rate_per_second=25)
    waits = run_together([lambda h=h: h.reserve_rate(relay, 0.2, now=T0) for h in handles])
    # Burst 2.5: two at once, then one every 40 ms from 20 ms on; 0.22 s is past the horizon.
    expected = [0, 0, 0.02, 0.06, 0.10, 0.14, 0.18, None]
    assert sorted(waits, key=lambda w: 9 if w is None else w) == [
        w if w is None else pytest.approx(w, abs=1e-5) for w in expected
    ]


def test_a_refused_reservation_takes_nothing(make_limits):
    store, relay = make_limits(), provider(rate_per_second=1)
    assert store.reserve_rate(relay, 0.5, now=T0) == 0.0
    assert [store.reserve_rate(relay, 0.5, now=T0) for _ in range(10)] == [None] * 10
    assert store.capacity_wait(relay, now=T0) == pytest.approx(1.0, abs=1e-5)
    # Had the refusals advanced the schedule, this slot would be ten seconds off, not 0.4 s.
    assert store.reserve_rate(relay, 0.5, now=T0 + 0.6) == pytest.approx(0.4, abs=1e-5)


def test_reservations_use_the_store_clock_when_none_is_given(make_limits):
    store, relay = make_limits(), provider(rate_per_second=10)
    assert store.reserve_rate(relay, 1.0) == 0.0
    assert 0 < store.reserve_rate(relay, 1.0) <= 0.1  # one interval after the first, less any stall
    time.sleep(0.25)
    assert store.reserve_rate(relay, 1.0) == 0.0


def test_the_daily_count_is_taken_only_by_take_daily(make_limits):
    store, relay = make_limits(), provider(rate_per_second=100, rate_per_day=3)
    assert all(store.reserve_rate(relay, 1.0) is not None for _ in range(20))
    assert store.snapshot([relay])["relay"]["daily_remaining"] == 3
    assert [store.take_daily(relay) for _ in range(3)] == [0.0] * 3
    assert store.snapshot([relay])["relay"]["daily_remaining"] == 0
    to_midnight = seconds_to_next_utc_day(time.time())
    assert store.take_daily(relay) == pytest.approx(to_midnight, abs=2)
    # A spent daily cap refuses reservations and says how long until midnight (UTC).
    assert store.reserve_rate(relay, 1.0) is None
    assert store.capacity_wait(relay) == pytest.approx(to_midnight, abs=2)


def test_take_daily_counts_up_to_the_cap_per_utc_day(make_limits):
    store, relay = make_limits(), provider(rate_per_day=2)
    assert [store.take_daily(relay, now=T0 + i) for i in range(3)] == [0.0, 0.0, 6398.0]
    assert store.take_daily(relay, now=19676 * 86400.0) == 0.0


def test_take_daily_without_a_cap_counts_nothing(make_limits):
    store, relay = make_limits(), provider(rate_per_second=5)
    assert [store.take_daily(relay) for _ in range(50)] == [0.0] * 50
    assert store.snapshot([relay])["relay"]["rate_headroom"] == 1  # the rate is untouched


def test_breaker_wait_is_the_remaining_cooldown_and_takes_no_probe(make_limits):
    store = make_limits(**{**BREAKER, "cooldown_seconds": 0.6})
    assert store.breaker_wait("relay") == 0.0
    before = time.monotonic()
    open_breaker(store)
    wait = store.breaker_wait("relay")
    elapsed = time.monotonic() - before
    assert max(0.0, 0.6 - elapsed) - 0.01 <= wait <= 0.6
    time.sleep(0.65)
    assert store.breaker_state("relay") == "half_open"
    assert store.breaker_wait("relay") == 0.0
    assert store.breaker_wait("relay") == 0.0
    assert store.allow_request("relay") is True  # the probe was still there to take
    assert store.allow_request("relay") is False


# ---- connections ---------------------------------------------------------------------------


def test_connection_cap_holds_across_clients(make_limits):
    first, second = make_limits(), make_limits()
    relay = provider(max_connections=2)
    a, b = first.acquire_connection(relay), second.acquire_connection(relay)
    assert a and b and a != b
    assert first.acquire_connection(relay) is None
    assert second.acquire_connection(relay) is None
    first.release_connection(relay, a)
    assert second.acquire_connection(relay) is not None


def test_connection_cap_holds_under_a_race(make_limits):
    handles = [make_limits() for _ in range(6)]
    relay = provider(max_connections=3)
    tokens = run_together([lambda h=h: h.acquire_connection(relay) for h in handles])
    assert sum(t is not None for t in tokens) == 3


def test_crashed_holders_slot_expires(make_limits):
    crashed, survivor = make_limits(connection_lease_seconds=0.3), make_limits()
    relay = provider(max_connections=1)
    assert crashed.acquire_connection(relay) is not None  # never released: its process "died"
    assert survivor.acquire_connection(relay) is None
    time.sleep(0.35)
    assert survivor.acquire_connection(relay) is not None


def test_refresh_keeps_a_lease_and_reports_a_lapsed_one(make_limits):
    limits = make_limits(connection_lease_seconds=0.4)
    relay = provider(max_connections=1)
    token = limits.acquire_connection(relay)
    time.sleep(0.25)
    assert limits.refresh_connection(relay, token) is True
    time.sleep(0.25)
    assert limits.acquire_connection(relay) is None  # still held: the refresh extended it
    time.sleep(0.45)
    assert limits.refresh_connection(relay, token) is False


# ---- breaker -------------------------------------------------------------------------------

BREAKER = {"failure_threshold": 3, "window_seconds": 5.0, "cooldown_seconds": 0.3}


def open_breaker(limits: Limits, name: str = "relay") -> None:
    for _ in range(BREAKER["failure_threshold"]):
        limits.record_failure(name)


def test_breaker_opens_at_the_threshold_and_refuses(make_limits):
    limits = make_limits(**BREAKER)
    assert [limits.record_failure("relay") for _ in range(3)] == ["closed", "closed", "open"]
    assert limits.breaker_state("relay") == "open"
    assert limits.allow_request("relay") is False
    assert limits.allow_request("other") is True


def test_a_success_resets_the_count(make_limits):
    limits = make_limits(**BREAKER)
    limits.record_failure("relay")
    limits.record_failure("relay")
    limits.record_success("relay")
    limits.record_failure("relay")
    limits.record_failure("relay")
    assert limits.breaker_state("relay") == "closed"


def test_failures_outside_the_window_do_not_count(make_limits):
    limits = make_limits(**{**BREAKER, "window_seconds": 0.3})
    limits.record_failure("relay")
    limits.record_failure("relay")
    time.sleep(0.35)
    assert limits.record_failure("relay") == "closed"


def test_one_probe_after_the_cooldown_then_success_closes(make_limits):
    handles = [make_limits(**BREAKER) for _ in range(8)]
    open_breaker(handles[0])
    time.sleep(0.35)
    assert handles[1].breaker_state("relay") == "half_open"
    allowed = run_together([lambda h=h: h.allow_request("relay") for h in handles])
    assert allowed.count(True) == 1
    handles[2].record_success("relay")
    assert handles[3].breaker_state("relay") == "closed"
    assert handles[4].allow_request("relay") is True


def test_a_failed_probe_reopens_for_another_cooldown(make_limits):
    limits = make_limits(**BREAKER)
    open_breaker(limits)
    time.sleep(0.35)
    assert limits.allow_request("relay") is True
    assert limits.record_failure("relay") == "open"
    assert limits.allow_request("relay") is False
    time.sleep(0.35)
    assert limits.allow_request("relay") is True


def test_a_lost_probe_is_given_again_after_its_timeout(make_limits):
    limits = make_limits(**BREAKER, probe_timeout_seconds=0.2)
    open_breaker(limits)
    time.sleep(0.35)
    assert limits.allow_request("relay") is True  # its sender dies without reporting
    assert limits.allow_request("relay") is False
    time.sleep(0.25)
    assert limits.allow_request("relay") is True


def test_faults_while_open_do_not_extend_the_cooldown(make_limits):
    limits = make_limits(**BREAKER)
    open_breaker(limits)
    time.sleep(0.15)
    assert limits.record_failure("relay") == "open"  # a send begun before it opened
    time.sleep(0.2)
    assert limits.breaker_state("relay") == "half_open"


# ---- snapshot ------------------------------------------------------------------------------


def test_snapshot_reports_state_failures_headroom_and_sessions(make_limits):
    limits = make_limits(**BREAKER)
    busy = provider("busy", rate_per_second=50, rate_per_day=100, max_connections=4)
    idle = provider("idle")
    limits.try_acquire_rate(busy)
    limits.try_acquire_rate(busy)
    limits.acquire_connection(busy)
    limits.record_failure("busy")
    open_breaker(limits, "idle")
    snap = limits.snapshot([busy, idle])
    assert snap["busy"]["state"] == "closed"
    assert snap["busy"]["failures"] == 1
    assert snap["busy"]["rate_headroom"] in (3, 4)  # 5 of burst less 2, plus any refill
    assert snap["busy"]["daily_remaining"] == 98
    assert snap["busy"]["connections_in_use"] == 1
    assert snap["busy"]["max_connections"] == 4
    assert snap["idle"]["state"] == "open"
    assert snap["idle"]["rate_headroom"] is None
    assert snap["idle"]["daily_remaining"] is None
    assert snap["idle"]["connections_in_use"] == 0
