"""MASSMAILER_LEASE_SECONDS: short by default, bounded, and long enough for a provider's timeout."""

from __future__ import annotations

import json

import pytest

from massmailer.config import ConfigError, load_settings

BASE = {
    "DATABASE_URL": "postgresql://u@h/d",
    "BROKER_URL": "amqp://h//",
    "MASSMAILER_SECRET_KEY": "k" * 32,
}


def providers(timeout: float) -> str:
    return json.dumps([{"name": "p", "host": "h", "port": 25, "timeout_seconds": timeout}])


def test_the_lease_is_short_by_default_and_need_not_outlast_the_task():
    settings = load_settings({**BASE, "MASSMAILER_TASK_TIME_LIMIT_SECONDS": "600"})

    assert settings.lease_seconds == 45
    assert settings.task_time_limit_seconds == 600


@pytest.mark.parametrize("value", ["4", "301", "forty", "-1"])
def test_a_lease_outside_its_bounds_stops_start_up_naming_it(value):
    with pytest.raises(ConfigError, match="MASSMAILER_LEASE_SECONDS"):
        load_settings({**BASE, "MASSMAILER_LEASE_SECONDS": value})


def test_a_lease_too_short_for_the_slowest_provider_is_refused():
    env = {**BASE, "MASSMAILER_PROVIDERS": providers(40), "MASSMAILER_LEASE_SECONDS": "59"}

    with pytest.raises(ConfigError, match=r"MASSMAILER_LEASE_SECONDS \(59\).*timeout_seconds"):
        load_settings(env)
    assert load_settings({**env, "MASSMAILER_LEASE_SECONDS": "60"}).lease_seconds == 60


def test_the_send_deadline_must_fit_well_inside_the_lease():
    assert load_settings(BASE).send_deadline_seconds == 20
    assert load_settings({**BASE, "MASSMAILER_LEASE_SECONDS": "10"}).send_deadline_seconds == 5
    with pytest.raises(ConfigError, match="MASSMAILER_SEND_DEADLINE_SECONDS"):
        load_settings({**BASE, "MASSMAILER_SEND_DEADLINE_SECONDS": "40"})
