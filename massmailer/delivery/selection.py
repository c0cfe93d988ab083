"""Choose the provider for one send: weighted, among the available, avoiding the one that failed."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence

from massmailer.delivery.providers.base import ProviderConfig

Availability = Callable[[str], bool] | Collection[str]


def choose_provider(
    candidates: Sequence[ProviderConfig],
    *,
    exclude: Collection[str],
    available: Availability,
    rng: random.Random,
) -> ProviderConfig | None:
    """Pick a provider by weight among the available ones not in `exclude`, or None.

    `available` is a set of names or a predicate on a name. A predicate is asked lazily, at most
    once per candidate, in weighted-draw order, and no more after its first yes: so it may
    acquire something (a rate-limit slot, the breaker's probe) and only the chosen provider's
    acquisition is spent. The draw is still weighted among the available ones: redrawing after
    removing a refusal leaves the others' relative weights unchanged.

    A provider with weight 0 or less is never chosen: that is how an operator drains one.
    """
    is_available = available if callable(available) else available.__contains__
    usable = [p for p in candidates if p.weight > 0]
    preferred = [p for p in usable if p.name not in exclude]
    # If only the excluded providers can take the send, use them rather than make the job wait:
    # `exclude` is a preference (try elsewhere after a failure), and waiting costs more.
    fallback = [p for p in usable if p.name in exclude]
    for group in (preferred, fallback):
        chosen = _first_available_by_weight(group, is_available, rng)
        if chosen is not None:
            return chosen
    return None


def _first_available_by_weight(
    group: list[ProviderConfig], is_available: Callable[[str], bool], rng: random.Random
) -> ProviderConfig | None:
    remaining = list(group)
    while remaining:
        index = rng.choices(range(len(remaining)), weights=[p.weight for p in remaining])[0]
        pick = remaining.pop(index)
        if is_available(pick.name):
            return pick
    return None
