"""Collect a chunk's outcomes and write them in one statement, every second or few dozen sends.

Recording as the chunk goes (not only at its end) keeps the one double-send window small: a worker
that dies after a provider's 250 and before the outcome is written. Outcomes are durable in this
process: a flush that fails keeps everything buffered, so the caller flushes again until the
database answers. Every value is bounded to its column where it enters, so no provider reply can
make every flush fail.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from massmailer import jobstore, suppressions
from massmailer.jobstore import Dispatch, OutcomeRow
from massmailer.metrics import instruments

logger = logging.getLogger(__name__)

FLUSH_EVERY_MESSAGES = 50
FLUSH_EVERY_SECONDS = 1.0

# Column sizes (massmailer/models): a longer value would fail the whole flush.
PROVIDER_CHARS = 50
QUEUE_ID_CHARS = 255
REPLY_CHARS = 512
OUTCOME_CHARS = 32
ENHANCED_CHARS = 16
ERROR_CHARS = 1000  # a Text column; bounded anyway so one reply cannot bloat every row
REASON_CHARS = 20


def bounded(value: str | None, limit: int) -> str | None:
    """Cut value to limit characters, dropping NULs and unencodable characters (refused by PG)."""
    if value is None:
        return None
    if len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the usual provider name, code or reply: nothing to clean or cut
    clean = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return clean[:limit]


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
        self._rows: list[OutcomeRow] = []
        self._attempts: list[dict] = []
        # The reply codes of each job's last try, carried into its outcome's event.
        self._codes: dict[int, tuple[int | None, str | None]] = {}
        self._suppress: list[tuple[str, str, str]] = []
        # When each sent job was accepted (its created_at) and its priority, for the latency metric.
        self._accepted: list[tuple[datetime, int]] = []
        self._retries: list[tuple[int, Dispatch]] = []  # published once flushed
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
        priority: int = 0,
        charged: int = 1,
    ) -> None:
        self._add(
            job_id,
            "sent",
            provider=bounded(provider, PROVIDER_CHARS),
            queue_id=bounded(queue_id, QUEUE_ID_CHARS),
            reply=bounded(reply, REPLY_CHARS),
            charged=charged,
        )
        self._accepted.append((accepted_at, priority))

    def failed(self, job_id: int, provider: str | None, error: str, charged: int) -> None:
        self._add(
            job_id,
            "failed",
            provider=bounded(provider, PROVIDER_CHARS),
            error=bounded(error, ERROR_CHARS),
            charged=charged,
        )

    def retry(
        self,
        job: jobstore.ClaimedJob,
        *,
        error: str,
        charged: int,
        tier_seconds: int,
        failed_provider: str | None,
    ) -> None:
        # next_attempt_at is the database's now plus the tier, set when the flush runs.
        self._add(
            job.job_id,
            "retry",
            error=bounded(error, ERROR_CHARS),
            charged=charged,
            tier_seconds=tier_seconds,
            failed_provider=bounded(failed_provider, PROVIDER_CHARS),
        )
        self._retries.append(
            (tier_seconds, Dispatch(job.job_id, job.priority, job.dispatch_seq + 1))
        )

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
        if smtp_code is not None and not 0 <= smtp_code <= 999:
            smtp_code = None  # not a reply code; an int column takes no arbitrary number
        self._codes[job_id] = (smtp_code, bounded(enhanced, ENHANCED_CHARS))
        self._attempts.append(
            {
                "job_id": job_id,
                "attempt_no": attempt_no,
                "provider": bounded(provider, PROVIDER_CHARS),
                "outcome": bounded(outcome, OUTCOME_CHARS),
                "smtp_code": smtp_code,
                "enhanced_code": bounded(enhanced, ENHANCED_CHARS),
                "error": bounded(error, ERROR_CHARS),
                "duration_ms": None if duration_ms is None else min(duration_ms, 2**31 - 1),
                "created_at": self._clock(),
            }
        )

    def suppress(self, email: str, reason: str, detail: str) -> None:
        self._suppress.append(
            (email, bounded(reason, REASON_CHARS) or "", bounded(detail, ERROR_CHARS) or "")
        )

    def pending(self) -> int:
        """Outcomes buffered and not yet written."""
        return len(self._rows)

    def maybe_flush(self) -> None:
        """Flush when enough outcomes or enough time has gone by."""
        due = self._monotonic() - self._last_flush >= FLUSH_EVERY_SECONDS
        if self.pending() >= FLUSH_EVERY_MESSAGES or (due and self.pending()):
            self.flush()

    def flush(self) -> None:
        """Write everything buffered in one transaction, then count what was committed.

        On failure the transaction is rolled back, the error raised, and everything stays
        buffered for the next flush.
        """
        try:
            jobstore.write_outcomes(self._session, self._token, self._rows)
            jobstore.record_attempts(self._session, self._attempts)
            suppressions.add_many(self._session, self._suppress, self._clock())
            self._session.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                self._session.rollback()
            raise
        self._count(self._clock())
        self.retries += self._retries
        self._rows, self._attempts, self._suppress, self._accepted, self._retries = (
            [],
            [],
            [],
            [],
            [],
        )
        self._codes = {}
        self._last_flush = self._monotonic()

    def _add(self, job_id: int, kind: str, **fields: object) -> None:
        smtp_code, enhanced = self._codes.get(job_id, (None, None))
        self._rows.append(
            OutcomeRow(job_id, kind, smtp_code=smtp_code, enhanced_code=enhanced, **fields)  # type: ignore[arg-type]
        )
        self.counts[kind] += 1

    def _count(self, now: datetime) -> None:
        # After the commit: a flush that failed counts nothing, so metrics never run ahead of
        # the database.
        instruments.count_attempts(self._attempts)
        instruments.count_final("SENT", (r.provider for r in self._rows if r.kind == "sent"))
        instruments.count_final("FAILED", (r.provider for r in self._rows if r.kind == "failed"))
        instruments.count_retries(r.charged for r in self._rows if r.kind == "retry")
        instruments.observe_accept_to_sent(
            ((now - at).total_seconds(), priority) for at, priority in self._accepted
        )


def flush_until_recorded(
    recorder: OutcomeRecorder,
    *,
    give_up_after: float,
    pause: float = 1.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Flush until the database takes the outcomes or give_up_after seconds pass; True if written.

    A delivered outcome lost here means the job is sent again after its lease, so it is worth
    waiting out a database restart for.
    """
    deadline = monotonic() + give_up_after
    while True:
        try:
            recorder.flush()
            return True
        except SQLAlchemyError as exc:
            if monotonic() + pause > deadline:
                logger.error(
                    "event=outcomes_unrecorded pending=%d error=%s",
                    recorder.pending(),
                    type(exc).__name__,
                )
                return False
            logger.warning(
                "event=flush_retry pending=%d error=%s", recorder.pending(), type(exc).__name__
            )
            sleep(pause)
