"""Pure: what follows a failed try — fail now (maybe suppress), or retry after a delay tier."""

from __future__ import annotations

import random
from dataclasses import dataclass

from massmailer.config import Settings
from massmailer.delivery import retry
from massmailer.delivery.providers.base import FailureKind, SendError


@dataclass(frozen=True)
class FailNow:
    reason: str
    suppress: bool  # a hard bounce: never mail this address again
    possible_duplicate: bool = False  # the provider may have delivered it: count and log it


@dataclass(frozen=True)
class RetryLater:
    reason: str
    tier_seconds: int
    # False when nothing reached the provider (NOT_SENT) or it asked us to slow down
    # (THROTTLED): the try costs the job no attempt.
    charge: bool = True
    # True when the provider may already hold the message (UNKNOWN_OUTCOME): the retry may be
    # a duplicate, so the caller counts and logs it as one.
    possible_duplicate: bool = False


def after_failure(
    error: SendError, provider: str, attempts_after: int, settings: Settings, rng: random.Random
) -> FailNow | RetryLater:
    """Decide the job's fate after `attempts_after` tries, the last one failing with `error`."""
    reason = describe(provider, error)
    if not retry.charges_attempt(error.kind):
        # Not sent at all, or throttled: back soon, in the shortest tier, whatever the attempts
        # so far (a throttle is a wait for capacity, like our own rate limit).
        return RetryLater(reason, min(settings.retry_tiers_seconds), charge=False)
    if error.kind is FailureKind.PERMANENT_RECIPIENT:
        return FailNow(reason, suppress=True)
    if error.kind is FailureKind.BAD_DATA:
        return FailNow(reason, suppress=False)
    duplicate = retry.may_have_delivered(error.kind)
    if attempts_after >= settings.max_attempts:
        return FailNow(f"max attempts reached; last: {reason}", False, duplicate)
    delay = retry.backoff_delay(
        attempts_after,
        base_seconds=settings.backoff_base_seconds,
        cap_seconds=settings.backoff_cap_seconds,
        jitter=0.2,
        rng=rng,
    )
    tier = retry.pick_tier(delay, settings.retry_tiers_seconds)
    return RetryLater(reason, tier, possible_duplicate=duplicate)


def describe(provider: str, error: SendError) -> str:
    """One line for last_error: kind, provider, SMTP code, enhanced code, text."""
    code = f"{error.smtp_code} " if error.smtp_code else ""
    enhanced = f"{error.enhanced} " if error.enhanced else ""
    return f"{error.kind}: {provider}: {code}{enhanced}{error.message}"[:1000]
