"""Rate limits, session caps and circuit breakers, against real Redis and the in-process backend."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from massmailer.limits import Limits, MemoryLimits, RedisLimits, burst_for
from massmailer.limits.policy import gcra, gcra_headroom, seconds_to_next_utc_day, utc_day
from massmailer.providers.base import ProviderConfig

REDIS_URL = "redis://127.0.0.1:6379/0"
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
    client = redis.Redis.from_url(REDIS_URL)
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
        clients.append(redis.Redis.from_url(REDIS_URL, socket_timeout=5))
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
    limits, relay = make_limits(), provider(rate_per_second=40)
    seconds, admitted = 2.0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        wait = limits.try_acquire_rate(relay)
        if wait == 0.0:
            admitted += 1
        else:
            time.sleep(min(wait, 0.005))
    burst = burst_for(40)
    assert 40 * seconds * 0.9 <= admitted <= 40 * seconds + burst + 1
    beyond = [limits.try_acquire_rate(relay) for _ in range(20)]
    assert beyond.count(0.0) <= 1  # the loop left no burst; at most one interval refilled


def _hammer(prefix: str, relay: ProviderConfig, seconds: float, start, results) -> None:
    """Take sends from one provider as fast as allowed for `seconds`; report how many (a child)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
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
