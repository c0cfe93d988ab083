"""Per-process counters and histograms, merged per host by prometheus_client's multiprocess mode.

They are only ever incremented after the outcome they count is committed to PostgreSQL, so the
metrics never show a send the database lost.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Histogram

NO_PROVIDER = "none"

EMAILS = Counter(
    "massmailer_emails",
    "Jobs that reached a final status, by status and provider",
    ["status", "provider"],
)
ATTEMPTS = Counter(
    "massmailer_attempts",
    "SMTP attempts by provider, classification and reply code class",
    ["provider", "classification", "code_class"],
)
RETRIES = Counter(
    "massmailer_retries",
    "Jobs sent to a delay tier: after a failed attempt, or waiting for provider capacity",
    ["reason"],
)
SMTP_DURATION = Histogram(
    "massmailer_smtp_send_duration_seconds",
    "Time of one SMTP send (MAIL FROM to the reply after DATA), by provider",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ACCEPT_TO_SENT = Histogram(
    "massmailer_accept_to_sent_seconds",
    "Time from the API accepting a job to its provider accepting the message, by job priority",
    ["priority"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
)


def code_class(smtp_code: int | None) -> str:
    """Return 2xx, 4xx or 5xx for an SMTP reply code, or none when there was no reply."""
    if smtp_code is not None and smtp_code // 100 in (2, 4, 5):
        return f"{smtp_code // 100}xx"
    return "none"


def count_attempts(rows: Iterable[Mapping]) -> None:
    """Count committed email_attempts rows (provider, outcome, smtp_code, duration_ms)."""
    # Tallied first: labels() takes a lock and validates, once per label set and flush is enough.
    tally: collections.Counter[tuple[str, str, str]] = collections.Counter()
    durations: dict[str, list[float]] = collections.defaultdict(list)
    for row in rows:
        provider = row["provider"] or NO_PROVIDER
        tally[provider, row["outcome"], code_class(row["smtp_code"])] += 1
        if row["duration_ms"] is not None:
            durations[provider].append(row["duration_ms"] / 1000)
    for labels, n in tally.items():
        ATTEMPTS.labels(*labels).inc(n)
    for provider, seconds in durations.items():
        _observe_all(SMTP_DURATION.labels(provider), seconds)


def count_final(status: str, providers: Iterable[str | None]) -> None:
    """Count jobs that committed a final status."""
    for provider, n in collections.Counter(providers).items():
        EMAILS.labels(status, provider or NO_PROVIDER).inc(n)


def count_retries(charged: Iterable[int]) -> None:
    """Count jobs sent to a delay tier; an uncharged one waited for capacity."""
    for reason, n in collections.Counter("failure" if c else "capacity" for c in charged).items():
        RETRIES.labels(reason).inc(n)


def observe_accept_to_sent(seconds_by_priority: Iterable[tuple[float, int]]) -> None:
    """Record how long committed SENT jobs took from acceptance, with each job's priority."""
    by_priority: dict[int, list[float]] = collections.defaultdict(list)
    for value, priority in seconds_by_priority:
        by_priority[priority].append(max(0.0, value))
    for priority, values in by_priority.items():
        _observe_all(ACCEPT_TO_SENT.labels(str(priority)), values)


def _observe_all(histogram, values: Iterable[float]) -> None:
    for value in values:
        histogram.observe(value)
