"""Collect a chunk's outcomes and write them in a few statements, every second or few dozen sends.

Recording as the chunk goes (not only at its end) keeps the one double-send window small: a worker
that dies after a provider's 250 and before the outcome is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from massmailer import jobstore, suppressions
from massmailer.jobstore import Dispatch
from massmailer.metrics import instruments

FLUSH_EVERY_MESSAGES = 50
FLUSH_EVERY_SECONDS = 1.0


class OutcomeRecorder:
    """Buffer outcomes and attempt rows; flush() writes them under the chunk's claim token."""

    def __init__(
        self,
        session: Session,
        token: str,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._token = token
        self._clock = clock
        self._monotonic = monotonic
        self._last_flush = monotonic()
        self._sent: list[dict] = []
        self._failed: list[dict] = []
        self._retry: list[dict] = []
        self._attempts: list[dict] = []
        self._suppress: list[tuple[str, str, str]] = []
        self._accepted: list[datetime] = []  # when each sent job was accepted (its created_at)
        self.retries: list[tuple[int, Dispatch]] = []  # (delay tier seconds, job), once flushed
        self.counts = {"sent": 0, "failed": 0, "retry": 0}

    def sent(
        self,
        job_id: int,
        provider: str,
        queue_id: str | None,
        reply: str,
        *,
        accepted_at: datetime,
        charged: int = 1,
    ) -> None:
        self._sent.append(
            {
                "b_job_id": job_id,
                "b_provider": provider,
                "b_queue_id": queue_id,
                "b_reply": reply[:512],
                "b_charged": charged,
            }
        )
        self._accepted.append(accepted_at)
        self.counts["sent"] += 1

    def failed(self, job_id: int, provider: str | None, error: str, charged: int) -> None:
        self._failed.append(
            {"b_job_id": job_id, "b_provider": provider, "b_error": error, "b_charged": charged}
        )
        self.counts["failed"] += 1

    def retry(
        self,
        job: jobstore.ClaimedJob,
        *,
        error: str,
        charged: int,
        tier_seconds: int,
        failed_provider: str | None,
    ) -> None:
        next_attempt_at = self._clock() + timedelta(seconds=tier_seconds)
        self._retry.append(
            {
                "b_job_id": job.job_id,
                "b_error": error,
                "b_charged": charged,
                "b_next_attempt_at": next_attempt_at,
                "b_failed_provider": failed_provider,
            }
        )
        self.retries.append(
            (tier_seconds, Dispatch(job.job_id, job.priority, job.dispatch_seq + 1))
        )
        self.counts["retry"] += 1

    def attempt(
        self,
        job_id: int,
        attempt_no: int,
        provider: str,
        outcome: str,
        *,
        smtp_code: int | None = None,
        enhanced: str | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
    ) -> None:
        self._attempts.append(
            {
                "job_id": job_id,
                "attempt_no": attempt_no,
                "provider": provider,
                "outcome": outcome,
                "smtp_code": smtp_code,
                "enhanced_code": enhanced,
                "error": error,
                "duration_ms": duration_ms,
                "created_at": self._clock(),
            }
        )

    def suppress(self, email: str, reason: str, detail: str) -> None:
        self._suppress.append((email, reason, detail))

    def pending(self) -> int:
        return len(self._sent) + len(self._failed) + len(self._retry)

    def maybe_flush(self) -> None:
        """Flush when enough outcomes or enough time has gone by."""
        due = self._monotonic() - self._last_flush >= FLUSH_EVERY_SECONDS
        if self.pending() >= FLUSH_EVERY_MESSAGES or (due and self.pending()):
            self.flush()

    def flush(self) -> None:
        """Write everything buffered in one transaction, then count what was committed."""
        now = self._clock()
        jobstore.mark_sent(self._session, self._token, self._sent, now)
        jobstore.mark_failed(self._session, self._token, self._failed, now)
        jobstore.mark_retry(self._session, self._token, self._retry, now)
        jobstore.record_attempts(self._session, self._attempts)
        suppressions.add_many(self._session, self._suppress, now)
        self._session.commit()
        self._count(now)
        self._sent, self._failed, self._retry, self._attempts, self._suppress = [], [], [], [], []
        self._accepted = []
        self._last_flush = self._monotonic()

    def _count(self, now: datetime) -> None:
        # After the commit: a flush that failed counts nothing, so metrics never run ahead of
        # the database.
        instruments.count_attempts(self._attempts)
        instruments.count_final("SENT", (r["b_provider"] for r in self._sent))
        instruments.count_final("FAILED", (r["b_provider"] for r in self._failed))
        instruments.count_retries(r["b_charged"] for r in self._retry)
        instruments.observe_accept_to_sent((now - at).total_seconds() for at in self._accepted)
