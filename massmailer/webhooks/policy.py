"""Pure retry policy: when the next try is due, and when to give up."""

from __future__ import annotations

FIRST_DELAY_SECONDS = 5.0
FACTOR = 3.0
MAX_DELAY_SECONDS = 12 * 3600.0
GIVE_UP_AFTER_SECONDS = 3 * 86400.0  # a message older than this is not tried again
MAX_RETRY_AFTER_SECONDS = 86400.0


def backoff_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the `attempts`-th failed try: 5 s, 15 s, 45 s … capped at 12 h.

    A receiver's Retry-After is honoured when it asks for longer (bounded to a day).
    """
    delay = min(FIRST_DELAY_SECONDS * FACTOR ** max(attempts - 1, 0), MAX_DELAY_SECONDS)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, MAX_RETRY_AFTER_SECONDS)
    return delay


def gives_up(age_seconds: float, delay: float) -> bool:
    """True when the next try would fall past the three days a message is tried for."""
    return age_seconds + delay > GIVE_UP_AFTER_SECONDS


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delta-seconds form); None when absent or not a number."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def outcome_of(status: int | None) -> str:
    """delivered (2xx), disabled (410: the receiver asks us to stop) or retry."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "disabled"
    return "retry"
