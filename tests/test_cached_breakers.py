"""A closed breaker is trusted for a moment in-process; faults and probes still reach the store."""

from __future__ import annotations

import time

import pytest

from massmailer.delivery.limits import MemoryLimits
from massmailer.delivery.limits.cached import CachedBreakers


class CountingLimits(MemoryLimits):
    """The in-process backend, counting the calls that would be Redis round trips."""

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        self.calls: list[str] = []

    def breaker_state(self, provider_name):
        self.calls.append("state")
        return super().breaker_state(provider_name)

    def breaker_wait(self, provider_name):
        self.calls.append("wait")
        return super().breaker_wait(provider_name)

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


def test_an_open_breaker_is_looked_up_once_per_ttl_and_reports_its_true_cooldown():
    inner, clock = CountingLimits(failure_threshold=1, cooldown_seconds=30), Clock()
    limits = CachedBreakers(inner, ttl_seconds=1.0, clock=clock)
    limits.record_failure("ses")
    inner.calls.clear()

    first = limits.breaker_wait("ses")
    clock.now += 0.5
    later = [limits.breaker_wait("ses") for _ in range(100)]

    assert 29 < first <= 30
    assert all(w == pytest.approx(first - 0.5) for w in later)  # the cool-down, not the ttl
    assert inner.calls == ["state", "wait"]
    clock.now += 1.0
    assert limits.breaker_wait("ses") > 0
    assert inner.calls == ["state", "wait", "state", "wait"]


def test_a_closed_breaker_needs_no_lookup_for_its_wait():
    inner, clock = CountingLimits(), Clock()
    limits = CachedBreakers(inner, ttl_seconds=1.0, clock=clock)
    assert [limits.breaker_wait("ses") for _ in range(50)] == [0.0] * 50
    assert limits.allow_request("ses") is True
    assert inner.calls == ["state"]


def test_a_success_here_forgets_that_the_breaker_was_open():
    inner, clock = CountingLimits(failure_threshold=1, cooldown_seconds=30), Clock()
    limits = CachedBreakers(inner, ttl_seconds=10.0, clock=clock)
    limits.record_failure("ses")
    assert limits.breaker_wait("ses") > 0

    limits.record_success("ses")  # a send begun before the breaker opened came back fine

    assert limits.breaker_wait("ses") == 0.0
