"""A closed breaker is trusted for a moment in-process; faults and probes still reach the store."""

from __future__ import annotations

import time

from massmailer.limits import MemoryLimits
from massmailer.limits.cached import CachedBreakers


class CountingLimits(MemoryLimits):
    """The in-process backend, counting the calls that would be Redis round trips."""

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        self.calls: list[str] = []

    def breaker_state(self, provider_name):
        self.calls.append("state")
        return super().breaker_state(provider_name)

    def allow_request(self, provider_name):
        self.calls.append("allow")
        return super().allow_request(provider_name)

    def record_success(self, provider_name):
        self.calls.append("success")
        super().record_success(provider_name)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_closed_breaker_costs_one_lookup_per_ttl_not_two_per_send():
    inner, clock = CountingLimits(), Clock()
    limits = CachedBreakers(inner, ttl_seconds=1.0, clock=clock)

    for _ in range(100):
        assert limits.allow_request("ses")
        limits.record_success("ses")
    clock.now += 1.5
    assert limits.allow_request("ses")

    assert inner.calls == ["state", "state"]


def test_a_fault_is_always_recorded_and_an_open_breaker_refuses_at_once():
    inner, clock = CountingLimits(failure_threshold=2, cooldown_seconds=30), Clock()
    limits = CachedBreakers(inner, ttl_seconds=10.0, clock=clock)
    assert limits.allow_request("ses")

    limits.record_failure("ses")
    assert limits.record_failure("ses") == "open"

    assert limits.allow_request("ses") is False


def test_after_the_cooldown_one_probe_goes_and_its_success_closes_the_breaker():
    inner = CountingLimits(failure_threshold=1, cooldown_seconds=0.05)
    limits = CachedBreakers(inner, ttl_seconds=10.0)
    limits.record_failure("ses")
    time.sleep(0.1)
    assert limits.allow_request("ses") is True  # the probe
    assert limits.allow_request("ses") is False  # nobody else while it is out

    limits.record_success("ses")

    assert "success" in inner.calls
    assert inner.breaker_state("ses") == "closed"
    assert limits.allow_request("ses") is True
