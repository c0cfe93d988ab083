"""Warm-up: daily caps rising by day since a start date, in force wherever the daily count is."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import redis

from massmailer.config import ConfigError, parse_provider
from massmailer.delivery.limits import MemoryLimits, RedisLimits
from massmailer.delivery.picker import ProviderPicker
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.providers.pool import PoolRegistry
from massmailer.delivery.sending import JobSender, SendWindow
from massmailer.delivery.warmup import Warmup, describe
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra
from tests.conftest import provider_entry
from tests.test_after_a_250 import MESSAGE, job
from tests.test_dashboard import PASSWORD, basic

START = date(2026, 11, 20)
SCHEDULE = Warmup(START, (500, 1000, 2000, 5000, 10000))


def noon(day: date) -> float:
    """A Unix time in the middle of a UTC day."""
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("today", "rate_per_day", "cap"),
    [
        (START - timedelta(days=3), None, 500),  # not begun: the first cap, not the full rate
        (START, None, 500),  # day 0 is the start date itself
        (START + timedelta(days=1), None, 1000),
        (START + timedelta(days=4), None, 10000),  # the last day of the schedule
        (START + timedelta(days=5), None, None),  # after it: no daily cap at all
        (START + timedelta(days=5), 50_000, 50_000),  # after it: the provider's rate_per_day
        (START + timedelta(days=2), 1500, 1500),  # a lower rate_per_day still wins
        (START + timedelta(days=2), 9000, 2000),
    ],
)
def test_the_cap_in_force_follows_the_utc_date(today, rate_per_day, cap):
    provider = ProviderConfig("new-ip", "h", 25, rate_per_day=rate_per_day, warmup=SCHEDULE)
    assert provider.daily_cap(noon(today)) == cap


def test_the_day_turns_at_utc_midnight():
    provider = ProviderConfig("new-ip", "h", 25, warmup=SCHEDULE)
    midnight = datetime(2026, 11, 21, tzinfo=UTC).timestamp()
    assert (provider.daily_cap(midnight - 0.001), provider.daily_cap(midnight)) == (500, 1000)


def test_without_a_schedule_the_cap_is_rate_per_day():
    assert ProviderConfig("old", "h", 25, rate_per_day=7).daily_cap() == 7


@pytest.mark.parametrize(
    ("today", "text"),
    [
        (START - timedelta(days=1), "500 (warm-up starts 2026-11-20)"),
        (START + timedelta(days=1), "1000 (warm-up day 2 of 5)"),
        (START + timedelta(days=9), "none (warm-up done)"),
    ],
)
def test_the_cap_is_described_for_people(today, text):
    cap = ProviderConfig("p", "h", 25, warmup=SCHEDULE).daily_cap(noon(today))
    assert describe(SCHEDULE, cap, today) == text


def entry(**warmup) -> dict:
    return {"name": "new-ip", "host": "h", "port": 25, "warmup": warmup}


def test_a_schedule_is_read_from_the_provider_entry():
    provider = parse_provider(entry(start="2026-11-20", daily_caps=[500, 1000]), "P[0]")
    assert provider.warmup == Warmup(START, (500, 1000))


@pytest.mark.parametrize(
    ("warmup", "message"),
    [
        ({"start": "20/11/2026", "daily_caps": [1]}, "'warmup.start' must be a date like"),
        ({"daily_caps": [1]}, "'warmup.start' must be a date like"),
        ({"start": "2026-11-20"}, "'warmup.daily_caps' must be a list"),
        ({"start": "2026-11-20", "daily_caps": []}, "'warmup.daily_caps' must hold at least one"),
        ({"start": "2026-11-20", "daily_caps": [10, 0]}, "whole numbers of at least 1"),
        ({"start": "2026-11-20", "daily_caps": [10, 2.5]}, "whole numbers of at least 1"),
        ({"start": "2026-11-20", "daily_caps": [100, 50]}, "must not decrease"),
        ({"start": "2026-11-20", "daily_caps": [1], "days": 3}, "unknown field(s) ['days']"),
    ],
)
def test_a_malformed_schedule_stops_start_up_naming_the_field(warmup, message):
    with pytest.raises(ConfigError, match="P\\[0\\] \\(new-ip\\): ") as error:
        parse_provider(entry(**warmup), "P[0]")
    assert message in str(error.value)


def test_a_schedule_that_is_not_an_object_is_refused():
    with pytest.raises(ConfigError, match="'warmup' must be an object"):
        parse_provider({"name": "n", "host": "h", "port": 25, "warmup": [500]}, "P[0]")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request):
    if request.param == "memory":
        yield MemoryLimits()
        return
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5)
    yield RedisLimits(client, prefix=prefix)
    infra.delete_redis_prefix(prefix)
    client.close()


def test_the_daily_count_stops_at_the_days_warm_up_cap_and_rises_with_the_next_day(store):
    provider = ProviderConfig("new-ip", "h", 25, warmup=Warmup(START, (2, 3)))
    day0, day1 = noon(START), noon(START + timedelta(days=1))

    assert [store.take_daily(provider, day0) for _ in range(2)] == [0.0, 0.0]
    assert store.take_daily(provider, day0) == pytest.approx(12 * 3600)  # to UTC midnight
    assert store.reserve_rate(provider, 1.0, day0) is None  # nothing reserved past the cap
    assert store.capacity_wait(provider, day0) == pytest.approx(12 * 3600)
    assert [store.take_daily(provider, day1) for _ in range(4)][-2:] == [0.0, 12 * 3600]


def test_the_snapshot_shows_the_cap_in_force_and_what_is_left(store):
    today = datetime.now(UTC).date()
    provider = ProviderConfig("new-ip", "h", 25, rate_per_day=99, warmup=Warmup(today, (5, 10)))
    store.take_daily(provider)

    health = store.snapshot([provider])["new-ip"]

    assert (health["daily_cap"], health["daily_remaining"]) == (5, 4)


def test_a_provider_over_todays_warm_up_cap_stops_sending_and_its_jobs_wait_uncharged():
    limits = MemoryLimits()
    pools = PoolRegistry(slots=limits, maintain_every_seconds=None)
    window = SendWindow(may_start=lambda needed: None, deadline_seconds=5)
    today = datetime.now(UTC).date()
    with FaultSMTPServer() as server:
        warming = ProviderConfig(
            "new-ip", "127.0.0.1", server.port, timeout_seconds=5, warmup=Warmup(today, (3, 6))
        )
        picker = ProviderPicker([warming], limits, random.Random(1))
        sender = JobSender(picker, limits, pools, rate_wait_seconds=5)

        results = [sender.send(job(i), "b@massmailer.test", MESSAGE, window) for i in range(5)]
        pools.close_all()

    assert [r.delivered is not None for r in results] == [True, True, True, False, False]
    assert server.message_count == 3
    to_midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
    for waiting in results[3:]:
        # Handed to a delay tier until the cap resets: no attempt, nothing charged.
        assert waiting.attempts == [] and waiting.charged == 0 and waiting.error is None
        assert waiting.wait_seconds == pytest.approx(to_midnight.timestamp() - time.time(), abs=5)


@pytest.fixture
def env(env):
    return {**env, "MASSMAILER_ADMIN_USER": "ops", "MASSMAILER_ADMIN_PASSWORD": PASSWORD}


@pytest.fixture
def providers(smtp_server):
    today = datetime.now(UTC).date()
    schedule = {"start": (today - timedelta(days=1)).isoformat(), "daily_caps": [500, 1000, 2000]}
    return [
        provider_entry("warming", smtp_server, rate_per_second=50, warmup=schedule),
        provider_entry("capped", smtp_server, rate_per_day=7000),
        provider_entry("open", smtp_server),
    ]


@pytest.mark.integration
def test_flask_providers_shows_the_cap_in_force(app):
    result = app.test_cli_runner().invoke(args=["providers"])

    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line[:1].strip()}
    assert lines["warming"].endswith("50/s daily cap 1000 (warm-up day 2 of 3)")
    assert lines["capped"].endswith("no rate limit daily cap 7000")
    assert lines["open"].endswith("no rate limit")
    assert "left today 1000" in result.output  # the store counts against the warm-up's cap


@pytest.mark.integration
def test_the_dashboard_data_carries_the_cap_in_force(client):
    response = client.get("/dashboard/data.json", headers=basic("ops", PASSWORD))

    assert response.status_code == 200, response.data
    warming = response.get_json()["providers"][0]
    assert (warming["daily_cap"], warming["daily_cap_text"]) == (1000, "1000 (warm-up day 2 of 3)")
    assert warming["health"]["daily_cap"] == 1000
