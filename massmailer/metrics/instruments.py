"""Per-process counters and histograms, merged per host by prometheus_client's multiprocess mode.

They are only ever incremented after the outcome they count is committed to PostgreSQL, so the
metrics never show a send the database lost.
"""

from __future__ import annotations

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
    for row in rows:
        provider = row["provider"] or NO_PROVIDER
        ATTEMPTS.labels(provider, row["outcome"], code_class(row["smtp_code"])).inc()
        if row["duration_ms"] is not None:
            SMTP_DURATION.labels(provider).observe(row["duration_ms"] / 1000)


def count_final(status: str, providers: Iterable[str | None]) -> None:
    """Count jobs that committed a final status."""
    for provider in providers:
        EMAILS.labels(status, provider or NO_PROVIDER).inc()


def count_retries(charged: Iterable[int]) -> None:
    """Count jobs sent to a delay tier; an uncharged one waited for capacity."""
    for n in charged:
        RETRIES.labels("failure" if n else "capacity").inc()


def observe_accept_to_sent(seconds_by_priority: Iterable[tuple[float, int]]) -> None:
    """Record how long committed SENT jobs took from acceptance, with each job's priority."""
    for value, priority in seconds_by_priority:
        ACCEPT_TO_SENT.labels(str(priority)).observe(max(0.0, value))
