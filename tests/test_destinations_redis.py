"""A destination group's schedule in Redis: shared by every process, apart from the providers'."""

from __future__ import annotations

import itertools

import pytest
import redis

from massmailer.delivery.destinations import DestinationLimit
from massmailer.delivery.limits import RedisLimits
from massmailer.delivery.providers.base import ProviderConfig
from tests import infra

pytestmark = pytest.mark.integration

GOOGLE = DestinationLimit("google", 5.0)
T0 = 1_800_000_000.0


@pytest.fixture
def two_processes(prefix):
    """Two stores on two connections, as two worker processes have."""
    clients = [redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5) for _ in range(2)]
    yield [RedisLimits(c, prefix=prefix) for c in clients]
    for client in clients:
        client.close()


def test_two_processes_reserving_a_destination_get_one_schedule_at_its_rate(two_processes):
    subject = GOOGLE.rate_subject
    waits = [two_processes[i % 2].reserve_rate(subject, 2.0, now=T0) for i in range(10)]

    # 5/s, a burst of one: slots 0.2 s apart, whoever asks; the 11th+ would be past the horizon.
    assert waits == pytest.approx([0.2 * i for i in range(10)])
    assert two_processes[0].reserve_rate(subject, 2.0, now=T0) == pytest.approx(2.0)
    assert two_processes[1].reserve_rate(subject, 2.0, now=T0) is None
    assert two_processes[1].capacity_wait(subject, now=T0) == pytest.approx(2.2)


def test_the_destination_keys_hash_apart_from_any_providers(two_processes, prefix):
    store = two_processes[0]
    provider = ProviderConfig("relay", "h", 25, rate_per_second=5)
    store.reserve_rate(GOOGLE.rate_subject, 1.0, now=T0)

    keys = {k.decode() for k in store._redis.keys(f"{prefix}*")}

    # Its own hash tag: on Redis Cluster the two reservations are two calls to two slots.
    assert keys == {f"{prefix}{{~dest:google}}:rate"}
    assert store.reserve_rate(provider, 1.0, now=T0) == 0.0  # the provider's schedule is apart


def test_a_throttle_halves_the_destinations_rate_for_every_process(two_processes):
    first, second = two_processes
    subject = GOOGLE.rate_subject

    assert first.record_throttle(subject) == pytest.approx(2.5)
    # The other process's next reservations follow the cut rate: 0.4 s apart.
    waits = [second.reserve_rate(subject, 5.0) for _ in range(3)]
    assert [b - a for a, b in itertools.pairwise(waits)] == pytest.approx([0.4, 0.4], abs=0.02)


@pytest.fixture
def env(env):
    return {**env, "MASSMAILER_DESTINATION_LIMITS": '{"google": {"rate_per_second": 5}}'}


def test_flask_providers_lists_the_limited_groups_with_their_rate_in_force(app, settings):
    from massmailer.metrics.state import make_limits

    make_limits(settings).record_throttle(GOOGLE.rate_subject)

    result = app.test_cli_runner().invoke(args=["providers"])

    assert result.exit_code == 0, result.output
    assert "destination google" in result.output
    assert "5/s  effective 2.5/s (throttled)" in result.output
