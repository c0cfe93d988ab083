"""Deliver a chunk of jobs: claim, skip the suppressed, pick a provider, send, record."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from massmailer import jobstore, retry, suppressions
from massmailer.config import Settings
from massmailer.jobstore import ClaimedJob, Dispatch
from massmailer.limits.interface import Limits
from massmailer.message import OutgoingMessage, build_message, verp_sender
from massmailer.models.types import utcnow
from massmailer.outcomes import OutcomeRecorder
from massmailer.picker import NoProvider, ProviderPicker
from massmailer.providers.base import FailureKind, ProviderConfig, SendError
from massmailer.providers.pool import PoolRegistry, PoolTimeout

logger = logging.getLogger(__name__)

# The smallest wait when no provider can take a job: the first delay tier.
NO_PROVIDER_MIN_WAIT_SECONDS = 1.0


@dataclass
class ChunkReport:
    """What a chunk did, and what must be published again (after the outcomes are committed)."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retries: list[tuple[int, Dispatch]] = field(default_factory=list)
    released: list[Dispatch] = field(default_factory=list)


class DeliveryService:
    """Steps 3-7 of the design: everything a send task does, with its collaborators injected."""

    def __init__(
        self,
        settings: Settings,
        providers: Sequence[ProviderConfig],
        pools: PoolRegistry,
        limits: Limits,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._pools = pools
        self._limits = limits
        self._rng = rng or random.Random()
        self._clock = clock
        self._monotonic = monotonic
        self._picker = ProviderPicker(providers, limits, self._rng)

    def deliver(
        self, session: Session, job_ids: Sequence[int], *, budget_seconds: float
    ) -> ChunkReport:
        """Send the chunk's claimable jobs, stopping before budget_seconds run out."""
        deadline = self._monotonic() + budget_seconds
        token = uuid.uuid4().hex
        lease = timedelta(seconds=self._settings.lease_seconds)
        claimed = jobstore.claim(session, job_ids, token, self._clock(), lease)
        report = ChunkReport(claimed=len(claimed))
        if not claimed:
            return report
        suppressed = suppressions.suppressed_among(session, (j.recipient for j in claimed))
        recorder = OutcomeRecorder(session, token, self._clock, self._monotonic)
        try:
            for index, job in enumerate(claimed):
                if self._monotonic() >= deadline:
                    # Stop rather than outlive the lease; the rest go back to the queue.
                    report.released = self._release(session, token, claimed[index:])
                    break
                try:
                    self._deliver_one(job, recorder, suppressed)
                except Exception as exc:
                    # A bug, not a send failure: charge this job (so a poison job ends FAILED
                    # after max attempts), give the rest back, and fail the task visibly.
                    self._internal_error(job, recorder, exc)
                    self._release(session, token, claimed[index + 1 :])
                    raise
                recorder.maybe_flush()
        finally:
            recorder.flush()
        report.sent = recorder.counts["sent"]
        report.failed = recorder.counts["failed"]
        report.retries = recorder.retries
        return report

    def _release(self, session: Session, token: str, jobs: list[ClaimedJob]) -> list[Dispatch]:
        jobstore.release(session, token, (j.job_id for j in jobs), self._clock())
        return [Dispatch(j.job_id, j.priority, j.dispatch_seq + 1) for j in jobs]

    def _internal_error(self, job: ClaimedJob, recorder: OutcomeRecorder, exc: Exception) -> None:
        reason = f"internal error: {type(exc).__name__}: {exc}"[:1000]
        logger.exception("event=internal_error job_id=%d", job.job_id)
        if job.attempts + 1 >= self._settings.max_attempts:
            recorder.failed(job.job_id, None, reason, charged=1)
        else:
            tier = retry.pick_tier(self._settings.backoff_base_seconds)
            recorder.retry(
                job, error=reason, charged=1, tier_seconds=tier, failed_provider=job.failed_provider
            )

    def _deliver_one(
        self, job: ClaimedJob, recorder: OutcomeRecorder, suppressed: set[str]
    ) -> None:
        if job.recipient.lower() in suppressed:
            recorder.failed(job.job_id, None, "suppressed", charged=0)
            return
        choice = self._picker.pick(avoid=job.failed_provider)
        if isinstance(choice, NoProvider):
            self._wait_for_capacity(job, recorder, choice.wait_seconds)
            return
        try:
            data = build_message(self._outgoing(job))
        except (ValueError, UnicodeError) as exc:
            recorder.failed(job.job_id, None, f"bad_data: {exc}", charged=0)
            return
        self._send(job, choice, data, recorder)

    def _send(
        self, job: ClaimedJob, provider: ProviderConfig, data: bytes, recorder: OutcomeRecorder
    ) -> None:
        attempt_no = job.attempts + 1
        mail_from = (
            verp_sender(self._settings.bounce_address, job.job_id)
            if self._settings.bounce_address
            else job.sender
        )
        started = self._monotonic()
        try:
            with self._pools.get(provider).session() as smtp:
                delivered = smtp.send(mail_from, job.recipient, data)
        except PoolTimeout:
            # Every session to this provider is busy: capacity, not failure, so nothing is charged.
            self._wait_for_capacity(job, recorder, NO_PROVIDER_MIN_WAIT_SECONDS)
            return
        except SendError as error:
            duration_ms = int((self._monotonic() - started) * 1000)
            recorder.attempt(
                job.job_id,
                attempt_no,
                provider.name,
                str(error.kind),
                smtp_code=error.smtp_code,
                enhanced=error.enhanced,
                error=error.message[:1000],
                duration_ms=duration_ms,
            )
            self._handle_failure(job, provider, error, recorder)
            return
        duration_ms = int((self._monotonic() - started) * 1000)
        self._limits.record_success(provider.name)
        recorder.attempt(
            job.job_id,
            attempt_no,
            provider.name,
            "sent",
            smtp_code=delivered.smtp_code,
            duration_ms=duration_ms,
        )
        recorder.sent(job.job_id, provider.name, delivered.queue_id, delivered.reply)
        logger.info(
            "event=sent job_id=%d provider=%s queue_id=%s attempt=%d duration_ms=%d",
            job.job_id,
            provider.name,
            delivered.queue_id,
            attempt_no,
            duration_ms,
        )

    def _handle_failure(
        self, job: ClaimedJob, provider: ProviderConfig, error: SendError, recorder: OutcomeRecorder
    ) -> None:
        reason = _reason(provider.name, error)
        if error.kind is FailureKind.PROVIDER_FAULT:
            self._limits.record_failure(provider.name)
        if error.kind in (FailureKind.PERMANENT_RECIPIENT, FailureKind.BAD_DATA):
            if error.kind is FailureKind.PERMANENT_RECIPIENT:
                recorder.suppress(job.recipient, "hard_bounce", reason)
            recorder.failed(job.job_id, provider.name, reason, charged=1)
            logger.info(
                "event=failed job_id=%d provider=%s kind=%s code=%s",
                job.job_id,
                provider.name,
                error.kind,
                error.smtp_code,
            )
            return
        attempts_after = job.attempts + 1
        if attempts_after >= self._settings.max_attempts:
            recorder.failed(job.job_id, provider.name, f"max attempts reached; last: {reason}", 1)
            logger.info(
                "event=failed job_id=%d provider=%s kind=%s attempts=%d",
                job.job_id,
                provider.name,
                error.kind,
                attempts_after,
            )
            return
        delay = retry.backoff_delay(
            attempts_after,
            base_seconds=self._settings.backoff_base_seconds,
            cap_seconds=self._settings.backoff_cap_seconds,
            jitter=0.2,
            rng=self._rng,
        )
        tier = retry.pick_tier(delay)
        recorder.retry(
            job, error=reason, charged=1, tier_seconds=tier, failed_provider=provider.name
        )
        logger.info(
            "event=retry job_id=%d provider=%s kind=%s code=%s attempt=%d delay_s=%d",
            job.job_id,
            provider.name,
            error.kind,
            error.smtp_code,
            attempts_after,
            tier,
        )

    def _wait_for_capacity(self, job: ClaimedJob, recorder: OutcomeRecorder, wait: float) -> None:
        # No attempt is charged: the job did not fail, nobody could take it yet.
        tier = retry.pick_tier(max(wait, NO_PROVIDER_MIN_WAIT_SECONDS))
        recorder.retry(
            job,
            error="waiting: no provider available",
            charged=0,
            tier_seconds=tier,
            failed_provider=job.failed_provider,
        )
        logger.info("event=wait job_id=%d delay_s=%d", job.job_id, tier)

    def _outgoing(self, job: ClaimedJob) -> OutgoingMessage:
        return OutgoingMessage(
            from_addr=job.sender,
            from_name=job.sender_name,
            to_addr=job.recipient,
            to_name=job.recipient_name,
            subject=job.subject,
            text=job.body or None,
            html=job.html,
            message_id=job.message_id,
            date=self._clock(),
            headers=tuple((name, value) for name, value in (job.headers or ())),
        )


def _reason(provider: str, error: SendError) -> str:
    code = f"{error.smtp_code} " if error.smtp_code else ""
    enhanced = f"{error.enhanced} " if error.enhanced else ""
    return f"{error.kind}: {provider}: {code}{enhanced}{error.message}"[:1000]
