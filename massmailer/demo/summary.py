"""What the demo did, read back from the database and the SMTP servers' own counters."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.demo.providers import LocalProvider
from massmailer.models import EmailAttempt, EmailJob, Status, Suppression


@dataclass(frozen=True)
class Latency:
    """Accept-to-sent times of some jobs, in seconds."""

    count: int
    median: float
    p95: float
    max: float


@dataclass(frozen=True)
class PriorityLatency:
    """Accept-to-sent times of one priority: every sent job, and those sent at the first try."""

    overall: Latency
    first_try: Latency | None  # None when every job of this priority needed a retry


@dataclass(frozen=True)
class Summary:
    messages: int
    status: dict[str, int]
    sent_by_provider: dict[str, int]
    accepted_by_server: dict[str, int | None]  # counted by each SMTP server, not the database
    attempts_by_provider: dict[str, dict[str, int]]  # provider -> outcome -> attempts
    retried_jobs: int  # jobs that met at least one transient failure
    retried_then_sent: int
    failed_by_kind: dict[str, int]
    suppressed: int
    latency_by_priority: dict[str, PriorityLatency]  # highest priority first
    elapsed_seconds: float
    first_pass_seconds: float  # from the first accept until every job had been tried once
    rate_per_second: float  # SENT jobs over elapsed_seconds
    database: str  # the SQLite file
    database_kept: bool  # False: it was in a temporary directory, removed at exit

    def to_json(self) -> dict:
        """Return the summary as JSON-safe values."""
        return asdict(self)


def collect(
    session: Session, providers: list[LocalProvider], elapsed: float, database: str, kept: bool
) -> Summary:
    """Read the outcome of the run."""
    status = jobstore.count_by_status(session)
    return Summary(
        messages=sum(status.values()),
        status=status,
        sent_by_provider=_sent_by_provider(session),
        accepted_by_server={p.config.name: p.accepted() for p in providers},
        attempts_by_provider=_attempts_by_provider(session),
        retried_jobs=_count_retried(session),
        retried_then_sent=_count_retried(session, EmailJob.status == Status.SENT),
        failed_by_kind=_failed_by_kind(session),
        suppressed=session.scalar(select(func.count()).select_from(Suppression)) or 0,
        latency_by_priority=_latency_by_priority(session),
        elapsed_seconds=round(elapsed, 3),
        first_pass_seconds=round(_first_pass_seconds(session), 3),
        rate_per_second=round(status[Status.SENT] / elapsed, 1) if elapsed > 0 else 0.0,
        database=database,
        database_kept=kept,
    )


def _sent_by_provider(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(EmailJob.provider, func.count())
        .where(EmailJob.status == Status.SENT)
        .group_by(EmailJob.provider)
    )
    return dict(sorted((provider, n) for provider, n in rows))


def _attempts_by_provider(session: Session) -> dict[str, dict[str, int]]:
    rows = session.execute(
        select(EmailAttempt.provider, EmailAttempt.outcome, EmailAttempt.smtp_code, func.count())
        .group_by(EmailAttempt.provider, EmailAttempt.outcome, EmailAttempt.smtp_code)
        .order_by(EmailAttempt.provider, EmailAttempt.outcome, EmailAttempt.smtp_code)
    )
    result: dict[str, dict[str, int]] = {}
    for provider, outcome, code, n in rows:
        label = outcome if outcome == "sent" or code is None else f"{outcome} {code}"
        result.setdefault(provider, {})[label] = n
    return result


def _count_retried(session: Session, *where) -> int:
    """Count the jobs that met a transient failure (and match where)."""
    retried = select(EmailAttempt.job_id).where(EmailAttempt.outcome == "transient")
    stmt = select(func.count()).where(EmailJob.job_id.in_(retried), *where)
    return session.scalar(stmt) or 0


def _failed_by_kind(session: Session) -> dict[str, int]:
    errors = session.scalars(select(EmailJob.last_error).where(EmailJob.status == Status.FAILED))
    kinds: dict[str, int] = {}
    for error in errors:
        # last_error reads "kind: provider: code text"; the kind says why it cannot succeed.
        kind = (error or "unknown").split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def _latency_by_priority(session: Session) -> dict[str, PriorityLatency]:
    rows = session.execute(
        select(EmailJob.priority, EmailJob.created_at, EmailJob.sent_at, EmailJob.attempts).where(
            EmailJob.status == Status.SENT
        )
    )
    overall: dict[int, list[float]] = {}
    first_try: dict[int, list[float]] = {}
    for priority, created, sent, attempts in rows:
        wait = (sent - created).total_seconds()
        overall.setdefault(priority, []).append(wait)
        if attempts == 1:
            first_try.setdefault(priority, []).append(wait)
    return {
        str(p): PriorityLatency(_latency(waits), _latency(first_try.get(p, [])))
        for p, waits in sorted(overall.items(), reverse=True)
    }


def _latency(waits: list[float]) -> Latency | None:
    if not waits:
        return None
    ordered = sorted(waits)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
    return Latency(
        count=len(ordered),
        median=round(statistics.median(ordered), 3),
        p95=round(p95, 3),
        max=round(ordered[-1], 3),
    )


def _first_pass_seconds(session: Session) -> float:
    first_try = (
        select(func.min(EmailAttempt.created_at).label("at"))
        .group_by(EmailAttempt.job_id)
        .subquery()
    )
    last_first_try = session.scalar(select(func.max(first_try.c.at)))
    first_accept = session.scalar(select(func.min(EmailJob.created_at)))
    if last_first_try is None or first_accept is None:
        return 0.0
    return (last_first_try - first_accept).total_seconds()
