"""Pick a provider that is healthy and has rate to spare, pacing briefly when one is nearly free."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from massmailer.limits.interface import Limits
from massmailer.providers.base import ProviderConfig
from massmailer.selection import choose_provider

# Waiting this long in a worker slot for a rate token is cheaper than a round trip through a
# delay tier (10 s at least); anything longer sends the job to a tier instead.
MAX_PACING_SECONDS = 0.5


@dataclass(frozen=True)
class NoProvider:
    """Nobody can take the job now; wait at least this long before trying again."""

    wait_seconds: float


class ProviderPicker:
    """Choose per job with selection's weights, the breakers and the fleet-wide rate limits."""

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        limits: Limits,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._providers = tuple(providers)
        self._limits = limits
        self._rng = rng
        self._sleep = sleep

    def pick(
        self, avoid: Collection[str] = (), *, strict: bool = False
    ) -> ProviderConfig | NoProvider:
        """Return a provider whose breaker admits a send and whose rate token is taken.

        `avoid` is a preference (used when nobody else can take the job) unless `strict`, which
        an immediate failover within one job uses so the provider that just failed is not retried.
        """
        shortest_wait = [float("inf")]

        def admits(name: str) -> bool:
            provider = self._by_name(name)
            # Rate first: a refused rate token costs little, while a half-open breaker's probe
            # taken and then not used would block the provider until the probe times out.
            wait = self._limits.try_acquire_rate(provider)
            if 0 < wait <= MAX_PACING_SECONDS:
                self._sleep(wait)
                wait = self._limits.try_acquire_rate(provider)
            shortest_wait[0] = min(shortest_wait[0], wait)
            return wait == 0 and self._limits.allow_request(name)

        candidates = (
            [p for p in self._providers if p.name not in avoid] if strict else self._providers
        )
        exclude = () if strict else set(avoid)
        chosen = choose_provider(candidates, exclude=exclude, available=admits, rng=self._rng)
        if chosen is not None:
            return chosen
        wait = shortest_wait[0]
        return NoProvider(wait_seconds=wait if wait != float("inf") else 0.0)

    def _by_name(self, name: str) -> ProviderConfig:
        return next(p for p in self._providers if p.name == name)
