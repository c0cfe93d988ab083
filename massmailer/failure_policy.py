"""Pure: what follows a failed try — fail now (maybe suppress), or retry after a delay tier."""

from __future__ import annotations

import random
from dataclasses import dataclass

from massmailer import retry
from massmailer.config import Settings
from massmailer.providers.base import FailureKind, SendError


@dataclass(frozen=True)
class FailNow:
    reason: str
    suppress: bool  # a hard bounce: never mail this address again


@dataclass(frozen=True)
class RetryLater:
    reason: str
    tier_seconds: int


def after_failure(
    error: SendError, provider: str, attempts_after: int, settings: Settings, rng: random.Random
) -> FailNow | RetryLater:
    """Decide the job's fate after `attempts_after` tries, the last one failing with `error`."""
    reason = describe(provider, error)
    if error.kind is FailureKind.PERMANENT_RECIPIENT:
        return FailNow(reason, suppress=True)
    if error.kind is FailureKind.BAD_DATA:
        return FailNow(reason, suppress=False)
    if attempts_after >= settings.max_attempts:
        return FailNow(f"max attempts reached; last: {reason}", suppress=False)
    delay = retry.backoff_delay(
        attempts_after,
        base_seconds=settings.backoff_base_seconds,
        cap_seconds=settings.backoff_cap_seconds,
        jitter=0.2,
        rng=rng,
    )
    return RetryLater(reason, retry.pick_tier(delay, settings.retry_tiers_seconds))


def describe(provider: str, error: SendError) -> str:
    """One line for last_error: kind, provider, SMTP code, enhanced code, text."""
    code = f"{error.smtp_code} " if error.smtp_code else ""
    enhanced = f"{error.enhanced} " if error.enhanced else ""
    return f"{error.kind}: {provider}: {code}{enhanced}{error.message}"[:1000]
