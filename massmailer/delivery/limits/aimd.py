"""Pure AIMD arithmetic: a throttle reply cuts a provider's effective rate, successes restore it.

The effective rate is a `factor` of a base: the configured `rate_per_second`, or, for a provider
with none, a temporary base fixed at its first throttle (its recent fleet send rate, at least
`floor_per_second`). A throttle reply multiplies the factor by `decrease` (at most once per
`cut_spacing_seconds`, so the replies to one burst of sends count as one signal) down to
`min_factor`. After `cooldown_seconds` without a throttle, each second of successful sending adds
`increase_per_second` to it, up to 1, where the state is forgotten (and an unrated provider is
unlimited again). The Redis scripts (lua.py) do the same arithmetic on the same fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class AimdSettings:
    """How hard a throttle reply cuts the rate and how fast successes restore it."""

    decrease: float = 0.5
    min_factor: float = 0.05
    cooldown_seconds: float = 15.0
    increase_per_second: float = 0.05  # of the base rate, per second of successful sending
    floor_per_second: float = 1.0  # an unrated provider's temporary base is at least this
    cut_spacing_seconds: float = 2.0
    # One report may raise the factor by at most this many seconds' worth: an increase needs
    # successes reported as time goes, not one late report after an idle spell.
    max_step_seconds: float = 2.0
    estimate_seconds: float = 5.0  # time constant of the recent send rate estimate

    def __post_init__(self) -> None:
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if not 0 < self.min_factor <= 1:
            raise ValueError("min_factor must be within (0, 1]")
        for name in ("increase_per_second", "floor_per_second", "estimate_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("cooldown_seconds", "cut_spacing_seconds", "max_step_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class AimdState:
    """One provider's adaptive state; times are Unix seconds (None: never)."""

    factor: float = 1.0
    base: float | None = None  # the temporary base of a provider with no configured rate
    cut_at: float | None = None
    throttled_at: float | None = None
    raised_at: float | None = None
    sent_estimate: float = 0.0  # successes, each decaying with time constant estimate_seconds
    estimated_at: float | None = None

    @property
    def throttled(self) -> bool:
        """True while the factor is below 1 (the rate is cut)."""
        return self.factor < 1.0


def effective_rate(configured: float | None, state: AimdState) -> float | None:
    """The rate in force: the configured or temporary base times the factor (None: unlimited)."""
    base = configured if configured is not None else state.base
    return None if base is None else base * state.factor


def recent_rate(state: AimdState, now: float, settings: AimdSettings) -> float:
    """The recent send rate (per second) the success reports add up to."""
    return _decayed(state, now, settings) / settings.estimate_seconds


def cut(
    state: AimdState, now: float, configured: float | None, settings: AimdSettings
) -> AimdState:
    """Apply a throttle reply: cut the factor (unless cut just now) and restart the cool-down."""
    base = state.base
    if configured is None and base is None:
        base = max(recent_rate(state, now, settings), settings.floor_per_second)
    factor = state.factor
    cut_at = state.cut_at
    if cut_at is None or now - cut_at >= settings.cut_spacing_seconds:
        factor = max(settings.min_factor, factor * settings.decrease)
        cut_at = now
    return replace(state, factor=factor, base=base, cut_at=cut_at, throttled_at=now)


def note_sent(state: AimdState, sent: int, now: float, settings: AimdSettings) -> AimdState:
    """Count `sent` successes: update the rate estimate and raise a cut factor additively."""
    state = replace(state, sent_estimate=_decayed(state, now, settings) + sent, estimated_at=now)
    if not state.throttled or sent <= 0:
        return state
    start = max(state.raised_at or 0.0, (state.throttled_at or 0.0) + settings.cooldown_seconds)
    if now <= start:
        return state  # still cooling down
    step = min(now - start, settings.max_step_seconds)
    factor = state.factor + settings.increase_per_second * step
    if factor >= 1.0:
        return AimdState(sent_estimate=state.sent_estimate, estimated_at=now)
    return replace(state, factor=factor, raised_at=now)


def _decayed(state: AimdState, now: float, settings: AimdSettings) -> float:
    if state.estimated_at is None:
        return state.sent_estimate
    age = max(0.0, now - state.estimated_at)
    return state.sent_estimate * math.exp(-age / settings.estimate_seconds)
