"""Real Redis: a throttle reply cuts a provider's rate for every process; successes restore it."""

from __future__ import annotations

import time
import uuid
from itertools import pairwise

import pytest
import redis

from massmailer.delivery.limits import RedisLimits, redis_backend
from massmailer.delivery.limits.aimd import AimdSettings
from massmailer.delivery.providers.base import ProviderConfig
from tests import infra

pytestmark = pytest.mark.integration

RATE = 20.0
FAST = AimdSettings(cooldown_seconds=0.3, increase_per_second=0.5, cut_spacing_seconds=0.2)


@pytest.fixture
def prefix():
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    yield prefix
    infra.delete_redis_prefix(prefix)


@pytest.fixture(autouse=True)
def report_every_call(monkeypatch):
    # Each "process" here reports its successes on every call, not once a second.
    monkeypatch.setattr(redis_backend, "REPORT_EVERY_SECONDS", 0.0)


def process(prefix: str, aimd: AimdSettings = FAST) -> RedisLimits:
    """A worker process's view of the fleet: its own client and in-process state."""
    client = redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5)
    return RedisLimits(client, prefix=prefix, aimd=aimd)


def slots_in(limits: RedisLimits, provider: ProviderConfig, seconds: float) -> int:
    """How many reservations the schedule hands out for the next `seconds` (server clock)."""
    now, taken = time.time(), 0
    while (wait := limits.reserve_rate(provider, seconds, now=now)) is not None and wait < seconds:
        taken += 1
    return taken


def test_a_throttle_seen_by_one_process_cuts_the_rate_of_another(prefix):
    provider = ProviderConfig("ses", "127.0.0.1", 2525, rate_per_second=RATE)
    one, other = process(prefix), process(prefix)

    assert one.record_throttle(provider) == RATE / 2
    assert other.snapshot([provider])["ses"]["effective_rate"] == RATE / 2
    # The other process's reservations follow the cut rate: ~10 a second, not ~20.
    taken = slots_in(other, provider, 3.0)
    print(f"slots within 3 s after one throttle: {taken} (configured {RATE:g}/s)")
    assert 29 <= taken <= 32  # 3 s at 10/s plus the burst


def test_successes_from_both_processes_restore_the_configured_rate(prefix):
    provider = ProviderConfig("ses", "127.0.0.1", 2525, rate_per_second=RATE)
    one, other = process(prefix), process(prefix)
    one.record_throttle(provider)
    time.sleep(0.25)
    one.record_throttle(provider)  # another cut after the spacing: 5/s
    assert other.snapshot([provider])["ses"]["rate_factor"] == pytest.approx(0.25)

    factors = []
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        for limits in (one, other):
            limits.note_sent(provider, 5)
        factors.append(one.snapshot([provider])["ses"]["rate_factor"])
        time.sleep(0.1)
    print(f"factor every 0.2 s after the cool-down: {[round(f, 2) for f in factors[2::2]]}")
    assert factors[0] == pytest.approx(0.25)  # still cooling down
    # +0.5 per second of successes, however many processes report them: back to 1 in ~1.8 s.
    assert factors[-1] == 1.0
    assert max(b - a for a, b in pairwise(factors)) <= 0.5 * 0.2 + 0.02
    assert slots_in(one, provider, 2.0) >= 2 * RATE


def test_an_unrated_provider_gets_a_temporary_rate_from_its_recent_sends(prefix):
    provider = ProviderConfig("relay", "127.0.0.1", 2525)
    # The recent rate is a moving average over estimate_seconds (5 s by default).
    quick = AimdSettings(estimate_seconds=0.25)
    one, other = process(prefix, quick), process(prefix, quick)
    assert other.reserve_rate(provider, 1.0) == 0.0  # unlimited: no Redis call at all

    for _ in range(10):  # 200 sends a second for half a second
        one.note_sent(provider, 10)
        time.sleep(0.05)
    rate = one.record_throttle(provider)

    print(f"temporary rate after a throttle at ~200 sends/s: {rate:.1f}/s")
    assert rate is not None and 40 <= rate <= 110, rate  # half the recent rate
    # The other process learns of the temporary rate with its next success report.
    other.note_sent(provider, 0)
    assert other.snapshot([provider])["relay"]["effective_rate"] == pytest.approx(rate)
    assert slots_in(other, provider, 1.0) <= rate * 1.1 + 1
