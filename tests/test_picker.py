"""ProviderPicker: reserve skips open breakers for free, admit charges only sends that happen."""

from __future__ import annotations

import random
import time
import uuid

import pytest
import redis

from massmailer.delivery.limits import MemoryLimits, RedisLimits
from massmailer.delivery.limits.cached import CachedBreakers
from massmailer.delivery.picker import (
    PROBE_BUSY_WAIT_SECONDS,
    NoProvider,
    ProviderPicker,
    Reservation,
)
from massmailer.delivery.providers.base import ProviderConfig
from tests import infra


def provider(name: str, **options) -> ProviderConfig:
    return ProviderConfig(name=name, host="127.0.0.1", port=2525, **options)


A, B = provider("a"), provider("b")


class FakeLimits:
    """Scripted answers per provider; records every call (a pure unit: no store behind it)."""

    def __init__(self, **answers: dict) -> None:
        self.answers = answers  # name -> {"breaker": s, "slot": s | None, "capacity": s, ...}
        self.calls: list[tuple[str, str]] = []

    def _answer(self, call: str, name: str, default):
        self.calls.append((call, name))
        return self.answers.get(name, {}).get(call, default)

    def breaker_wait(self, name: str) -> float:
        return self._answer("breaker", name, 0.0)

    def reserve_rate(self, p: ProviderConfig, horizon_seconds: float, now=None) -> float | None:
        slot = self._answer("slot", p.name, 0.0)
        return None if slot is None or slot > horizon_seconds else slot

    def capacity_wait(self, p: ProviderConfig, now=None) -> float:
        return self._answer("capacity", p.name, 0.0)

    def allow_request(self, name: str) -> bool:
        return self._answer("allow", name, True)

    def take_daily(self, p: ProviderConfig, now=None) -> float:
        return self._answer("daily", p.name, 0.0)

    def spent(self, name: str) -> set[str]:
        """What was asked of `name` that takes something: a slot, the probe or the daily count."""
        return {c for c, n in self.calls if n == name and c in ("slot", "allow", "daily")}


@pytest.mark.parametrize(
    ("answers", "avoid", "strict", "expected"),
    [
        pytest.param({}, (), False, Reservation(A, 0.0), id="a closed, slot now"),
        pytest.param({"a": {"slot": 0.3}}, (), False, Reservation(A, 0.3), id="a slot 0.3 s off"),
        pytest.param({"a": {"breaker": 9.0}}, (), False, Reservation(B, 0.0), id="a open: b"),
        pytest.param(
            {"a": {"breaker": 9.0}, "b": {"breaker": 4.0}},
            (),
            False,
            NoProvider(4.0),
            id="both open: the shorter cool-down",
        ),
        pytest.param(
            {"a": {"slot": None, "capacity": 2.5}, "b": {"breaker": 7.0}},
            (),
            False,
            NoProvider(2.5),
            id="a's slot beyond the horizon, b open",
        ),
        pytest.param(
            {"a": {"slot": None, "capacity": 6400.0}, "b": {"breaker": 30.0}},
            (),
            False,
            NoProvider(30.0),
            id="a's daily cap spent, b open",
        ),
        pytest.param({}, ("a",), False, Reservation(B, 0.0), id="avoids a"),
        pytest.param({"b": {"breaker": 3.0}}, ("a",), False, Reservation(A, 0.0), id="falls back"),
        pytest.param({"b": {"breaker": 3.0}}, ("a",), True, NoProvider(3.0), id="strict: no a"),
    ],
)
def test_reserve_table(answers, avoid, strict, expected):
    # Pin the draw order: a carries nearly all the weight, so it is asked first.
    picker = ProviderPicker(
        [provider("a", weight=1000), B], FakeLimits(**answers), random.Random(1)
    )
    got = picker.reserve(avoid, strict=strict, horizon_seconds=1.0)
    assert type(got) is type(expected)
    if isinstance(got, Reservation):
        assert (got.provider.name, got.wait_seconds) == (
            expected.provider.name,
            expected.wait_seconds,
        )
    else:
        assert got == expected


def test_reserve_never_spends_anything_on_an_open_breaker():
    limits = FakeLimits(a={"breaker": 12.0})
    picker = ProviderPicker([A, B], limits, random.Random(3))
    for _ in range(50):
        assert picker.reserve().provider == B
    assert limits.spent("a") == set()
    assert limits.spent("b") == {"slot"}  # a rate slot only: the probe and quota wait for admit


@pytest.mark.parametrize(
    ("answers", "wait", "asked"),
    [
        pytest.param({}, 0.0, ["allow", "daily"], id="go: breaker first, then the daily count"),
        pytest.param({"allow": False, "breaker": 12.0}, 12.0, ["allow", "breaker"], id="open"),
        pytest.param(
            {"allow": False}, PROBE_BUSY_WAIT_SECONDS, ["allow", "breaker"], id="probe taken"
        ),
        pytest.param({"daily": 3600.0}, 3600.0, ["allow", "daily"], id="daily cap spent"),
    ],
)
def test_admit_table(answers, wait, asked):
    limits = FakeLimits(a=answers)
    assert ProviderPicker([A], limits, random.Random(1)).admit(A) == wait
    assert [call for call, _ in limits.calls] == asked


def test_pick_paces_to_the_slot_then_admits():
    slept: list[float] = []
    limits = FakeLimits(a={"slot": 0.3})
    picker = ProviderPicker([A], limits, random.Random(1), sleep=slept.append)
    assert picker.pick() == A
    assert slept == [0.3]
    assert [c for c, _ in limits.calls] == ["breaker", "slot", "allow", "daily"]


def test_pick_sends_a_far_slot_away_without_waiting():
    slept: list[float] = []
    limits = FakeLimits(a={"slot": None, "capacity": 0.8})
    picker = ProviderPicker([A], limits, random.Random(1), sleep=slept.append)
    assert picker.pick() == NoProvider(0.8)
    assert slept == []


def test_pick_draws_again_when_admission_is_refused():
    limits = FakeLimits(a={"allow": False, "breaker": 20.0}, b={"daily": 500.0})
    picker = ProviderPicker([provider("a", weight=1000), B], limits, random.Random(1))
    assert picker.pick() == NoProvider(20.0)
    limits.answers["b"] = {}
    assert picker.pick().name == "b"


# ---- against the real stores: an open breaker costs nothing and says how long -----------------

BREAKER = {"failure_threshold": 2, "window_seconds": 30.0, "cooldown_seconds": 1.0}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request):
    if request.param == "memory":
        yield MemoryLimits(**BREAKER)
        return
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(infra.REDIS_URL, socket_timeout=5)
    yield CachedBreakers(RedisLimits(client, prefix=prefix, **BREAKER))
    infra.delete_redis_prefix(prefix)
    client.close()


def test_a_down_provider_burns_no_quota_and_jobs_wait_for_its_cooldown(store):
    down = provider("down", rate_per_second=5, rate_per_day=100)
    picker = ProviderPicker([down], store, random.Random(1))
    before = time.monotonic()
    for _ in range(BREAKER["failure_threshold"]):
        store.record_failure("down")
    opened = time.monotonic()

    for _ in range(50):
        asked = time.monotonic()
        answer = picker.reserve()
        # The remaining cool-down, within what the clock can tell (the moment it opened).
        latest = BREAKER["cooldown_seconds"] - (asked - opened)
        earliest = BREAKER["cooldown_seconds"] - (time.monotonic() - before)
        assert isinstance(answer, NoProvider)
        if earliest > 0.05:  # a stall of the loaded machine may have let the cool-down end
            assert earliest - 0.01 <= answer.wait_seconds <= latest + 0.01

    snapshot = store.snapshot([down])["down"]
    assert (snapshot["daily_remaining"], snapshot["rate_headroom"]) == (100, 1)


def test_the_half_open_probe_goes_to_the_first_sender_admitted(store):
    relay = provider("relay", rate_per_second=50)
    pickers = [ProviderPicker([relay], store, random.Random(i)) for i in range(2)]
    for _ in range(BREAKER["failure_threshold"]):
        store.record_failure("relay")
    time.sleep(1.05)

    first, second = (p.reserve() for p in pickers)  # both reserve: the probe is still there
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert pickers[0].admit(relay) == 0.0  # takes the probe
    assert pickers[1].admit(relay) == PROBE_BUSY_WAIT_SECONDS
    store.record_success("relay")
    assert pickers[1].admit(relay) == 0.0


def test_a_refused_rate_leaves_the_half_open_probe_for_a_sender(store):
    relay = provider("relay", rate_per_second=0.2)  # one send per 5 s
    picker = ProviderPicker([relay], store, random.Random(1))
    assert isinstance(picker.reserve(horizon_seconds=0.0), Reservation)
    for _ in range(BREAKER["failure_threshold"]):
        store.record_failure("relay")
    time.sleep(1.05)

    refused = picker.reserve(horizon_seconds=0.0)

    assert isinstance(refused, NoProvider)
    assert store.allow_request("relay") is True  # nobody stranded the probe
