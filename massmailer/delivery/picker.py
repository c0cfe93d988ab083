"""Pick a provider that is healthy and has rate to spare: reserve its slot, admit at send time."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.selection import choose_provider

# `pick()` (one send at a time per worker slot) waits this long at most for a rate slot: cheaper
# than a round trip through a delay tier (10 s at least); anything longer goes to a tier.
MAX_PACING_SECONDS = 0.5
# A half-open breaker whose single probe another sender holds: look again after about this long
# (the probe is one send; its outcome closes the breaker or opens it for a cool-down).
PROBE_BUSY_WAIT_SECONDS = 1.0
# A slot this near counts as due now (less than a thread's wake-up jitter); a horizon of exactly 0
# would make a fast schedule's prefetch fetch one slot per call.
NOW_SECONDS = 0.01


@dataclass(frozen=True)
class NoProvider:
    """Nobody can take the job now; wait at least this long before trying again."""

    wait_seconds: float


@dataclass(frozen=True)
class Reservation:
    """A rate slot taken on `provider`, `wait_seconds` from when it was reserved.

    The caller waits that long (holding no SMTP session), then calls `ProviderPicker.admit`
    right before sending. An unused reservation costs only its rate slot: no daily quota, no probe.
    """

    provider: ProviderConfig
    wait_seconds: float


class ProviderPicker:
    """Choose per job with selection's weights, the breakers and the fleet-wide rate limits.

    Two steps, so that nothing is spent on a send that does not happen:
    - `reserve` skips providers whose breaker is open (a read: no rate slot, no daily count, no
      probe taken) and takes a rate slot from the first one drawn by weight that has one
      within the horizon;
    - `admit`, at send time, takes the breaker's admission (the probe when half open) and then
      the daily count. A probe is therefore only ever taken by a sender that is about to send.
    """

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        limits: Limits,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._providers = tuple(providers)
        self._by_name = {p.name: p for p in self._providers}
        self._limits = limits
        self._rng = rng
        self._sleep = sleep

    def reserve(
        self, avoid: Collection[str] = (), *, strict: bool = False, horizon_seconds: float = 1.0
    ) -> Reservation | NoProvider:
        """Reserve a rate slot within `horizon_seconds` on a provider whose breaker is not open.

        `avoid` is a preference (used when nobody else can take the job) unless `strict`, which
        an immediate failover within one job uses so the provider that just failed is not retried.
        `NoProvider.wait_seconds` is how long until the nearest candidate could take the job: an
        open breaker's remaining cool-down, a rate slot beyond the horizon, or the daily reset.
        """
        choice = self._reserve(avoid, strict, horizon_seconds, refused=())
        return choice if isinstance(choice, Reservation) else _no_provider(choice)

    def reserve_now(self, provider: ProviderConfig) -> bool:
        """Reserve provider's next rate slot if it is due now and its breaker is not open.

        For a job that would follow another on an open session: it takes what it would take
        alone, but only what is free at once.
        """
        if self._limits.breaker_wait(provider.name) > 0:
            return False
        return self._limits.reserve_rate(provider, NOW_SECONDS) is not None

    def admit(self, provider: ProviderConfig) -> float:
        """At send time: take the breaker's admission (probe if half open), then the daily count.

        0.0 = go; >0 = cannot send on it now, wait about this long (nothing charged). If the
        daily cap refuses after a half-open probe was taken, the probe lapses on its own after
        the probe timeout; the provider cannot send before its daily reset anyway.
        """
        if not self._limits.allow_request(provider.name):
            return max(self._limits.breaker_wait(provider.name), PROBE_BUSY_WAIT_SECONDS)
        return self._limits.take_daily(provider)

    def pick(
        self, avoid: Collection[str] = (), *, strict: bool = False
    ) -> ProviderConfig | NoProvider:
        """Reserve, pace in this thread up to MAX_PACING_SECONDS, admit: a provider ready now.

        For a caller that sends one message at a time; a provider refused at admission is
        skipped and the draw repeats among the others.
        """
        refused: dict[str, float] = {}
        while True:
            choice = self._reserve(avoid, strict, MAX_PACING_SECONDS, refused=refused)
            if not isinstance(choice, Reservation):
                return _no_provider([*choice, *refused.values()])
            if choice.wait_seconds > 0:
                self._sleep(choice.wait_seconds)
            wait = self.admit(choice.provider)
            if wait == 0:
                return choice.provider
            refused[choice.provider.name] = wait

    def _reserve(
        self,
        avoid: Collection[str],
        strict: bool,
        horizon_seconds: float,
        *,
        refused: Collection[str],
    ) -> Reservation | list[float]:
        """Reserve on the first provider drawn that can; else each refusal's wait."""
        blocked: dict[str, float] = {}  # open breakers: name -> remaining cool-down
        no_slot: list[ProviderConfig] = []  # no rate slot within the horizon
        slot_wait = [0.0]

        def reserves(name: str) -> bool:
            provider = self._by_name[name]
            # A read first: an open breaker's provider must not spend rate, quota or the probe.
            breaker_wait = self._limits.breaker_wait(name)
            if breaker_wait > 0:
                blocked[name] = breaker_wait
                return False
            wait = self._limits.reserve_rate(provider, horizon_seconds)
            if wait is None:
                no_slot.append(provider)
                return False
            slot_wait[0] = wait
            return True

        candidates = [
            p for p in self._providers if p.name not in refused and not (strict and p.name in avoid)
        ]
        exclude = () if strict else set(avoid)
        chosen = choose_provider(candidates, exclude=exclude, available=reserves, rng=self._rng)
        if chosen is not None:
            return Reservation(chosen, slot_wait[0])
        return [*blocked.values(), *(self._limits.capacity_wait(p) for p in no_slot)]


def _no_provider(waits: list[float]) -> NoProvider:
    # The nearest refusal decides; no usable candidate at all says 0, as before.
    return NoProvider(min(waits, default=0.0))
