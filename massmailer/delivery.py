"""Deliver a chunk of jobs: claim, skip the suppressed, pick a provider, send, record."""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from massmailer import failure_policy, jobstore, retry, suppressions
from massmailer.compose import Composer
from massmailer.config import Settings
from massmailer.jobstore import ClaimedJob, Dispatch
from massmailer.limits.interface import Limits
from massmailer.message import build_message
from massmailer.models.types import utcnow
from massmailer.outages import OUTAGE_ERRORS
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
        self._composer = Composer(settings)

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
        self._composer.load(session, claimed)
        suppressed = suppressions.suppressed_among(session, (j.recipient for j in claimed))
        recorder = OutcomeRecorder(session, token, self._clock, self._monotonic)
        completed = False
        try:
            for index, job in enumerate(claimed):
                if self._monotonic() >= deadline:
                    # Stop rather than outlive the lease; the rest go back to the queue.
                    report.released = self._release(session, token, claimed[index:])
                    break
                try:
                    self._deliver_one(job, recorder, suppressed)
                except OUTAGE_ERRORS:
                    # Redis (or PostgreSQL) went away: the job is not at fault. Give the rest back
                    # while the database answers; otherwise their leases expire and the sweeper
                    # takes them.
                    with contextlib.suppress(*OUTAGE_ERRORS):
                        self._release(session, token, claimed[index:])
                    raise
                except Exception as exc:
                    # A bug, not a send failure: charge this job (so a poison job ends FAILED
                    # after max attempts), give the rest back, and fail the task visibly.
                    self._internal_error(job, recorder, exc)
                    self._release(session, token, claimed[index + 1 :])
                    raise
                recorder.maybe_flush()
            completed = True
        finally:
            if completed:
                recorder.flush()
            else:
                self._flush_after_error(session, recorder)
        report.sent = recorder.counts["sent"]
        report.failed = recorder.counts["failed"]
        report.retries = recorder.retries
        self._drop_cancelled(session, report, {j.job_id for j in claimed if j.batch_id})
        return report

    def _drop_cancelled(self, session: Session, report: ChunkReport, batch_jobs: set[int]) -> None:
        """Cancel, instead of dispatching again, batch jobs whose batch was cancelled meanwhile."""
        coming_back = [d.job_id for _, d in report.retries] + [d.job_id for d in report.released]
        cancelled = jobstore.cancel_if_batch_cancelled(
            session, [i for i in coming_back if i in batch_jobs], self._clock()
        )
        if cancelled:
            session.commit()
            report.retries = [(t, d) for t, d in report.retries if d.job_id not in cancelled]
            report.released = [d for d in report.released if d.job_id not in cancelled]

    def _flush_after_error(self, session: Session, recorder: OutcomeRecorder) -> None:
        """Record what the chunk did before it broke, if the database still answers.

        The error that broke the chunk keeps propagating either way; outcomes that cannot be
        written leave their jobs claimed until the lease expires.
        """
        try:
            recorder.flush()
        except SQLAlchemyError:
            logger.warning("event=outcomes_unrecorded reason=database_unavailable")
            with contextlib.suppress(SQLAlchemyError):
                session.rollback()

    def _release(self, session: Session, token: str, jobs: list[ClaimedJob]) -> list[Dispatch]:
        jobstore.release(session, token, (j.job_id for j in jobs), self._clock())
        return [Dispatch(j.job_id, j.priority, j.dispatch_seq + 1) for j in jobs]

    def _internal_error(self, job: ClaimedJob, recorder: OutcomeRecorder, exc: Exception) -> None:
        reason = f"internal error: {type(exc).__name__}: {exc}"[:1000]
        logger.exception("event=internal_error job_id=%d", job.job_id)
        if job.attempts + 1 >= self._settings.max_attempts:
            recorder.failed(job.job_id, None, reason, charged=1)
        else:
            tier = retry.pick_tier(
                self._settings.backoff_base_seconds, self._settings.retry_tiers_seconds
            )
            recorder.retry(
                job, error=reason, charged=1, tier_seconds=tier, failed_provider=job.failed_provider
            )

    def _deliver_one(
        self, job: ClaimedJob, recorder: OutcomeRecorder, suppressed: set[str]
    ) -> None:
        if job.recipient.lower() in suppressed:
            recorder.failed(job.job_id, None, "suppressed", charged=0)
            return
        try:
            data = build_message(self._composer.compose(job, self._clock()))
        except (ValueError, UnicodeError) as exc:
            recorder.failed(job.job_id, None, f"bad_data: {exc}", charged=0)
            return
        tried: list[str] = []
        last_error: SendError | None = None
        while True:
            # First choice avoids the provider that failed this job last time, if anyone else can
            # take it; a failover within this try never goes back to a provider that just failed.
            avoid = tried or [job.failed_provider or ""]
            choice = self._picker.pick(avoid=avoid, strict=bool(tried))
            if isinstance(choice, NoProvider):
                break
            result = self._try(
                job, choice, data, recorder, attempt_no=job.attempts + len(tried) + 1
            )
            if result is None:
                return  # sent
            if isinstance(result, PoolTimeout):
                break
            tried.append(choice.name)
            last_error = result
            if result.kind is not FailureKind.PROVIDER_FAULT:
                break
            # A provider fault says nothing about the message: fail over to another one now.
        if last_error is None:
            wait = choice.wait_seconds if isinstance(choice, NoProvider) else 0.0
            self._wait_for_capacity(job, recorder, wait)
        else:
            self._after_failure(job, tried[-1], last_error, len(tried), recorder)

    def _try(
        self,
        job: ClaimedJob,
        provider: ProviderConfig,
        data: bytes,
        recorder: OutcomeRecorder,
        *,
        attempt_no: int,
    ) -> SendError | None:
        """Send once through provider; record the attempt; return the error, or None if sent."""
        started = self._monotonic()
        try:
            with self._pools.get(provider).session() as smtp:
                delivered = smtp.send(self._composer.mail_from(job), job.recipient, data)
        except PoolTimeout as busy:
            # Every session to this provider is busy: capacity, not failure; nothing is recorded.
            return busy
        except SendError as error:
            if error.kind is FailureKind.PROVIDER_FAULT:
                self._limits.record_failure(provider.name)
            elif error.smtp_code is not None:
                # It answered (a 4xx or a bounce): reachable and accepting us, so the breaker
                # may close, and a half-open probe is not left hanging.
                self._limits.record_success(provider.name)
            recorder.attempt(
                job.job_id,
                attempt_no,
                provider.name,
                str(error.kind),
                smtp_code=error.smtp_code,
                enhanced=error.enhanced,
                error=error.message[:1000],
                duration_ms=self._ms_since(started),
            )
            logger.info(
                "event=attempt outcome=%s job_id=%d provider=%s code=%s enhanced=%s attempt=%d",
                error.kind,
                job.job_id,
                provider.name,
                error.smtp_code,
                error.enhanced,
                attempt_no,
            )
            return error
        duration_ms = self._ms_since(started)
        self._limits.record_success(provider.name)
        recorder.attempt(
            job.job_id,
            attempt_no,
            provider.name,
            "sent",
            smtp_code=delivered.smtp_code,
            duration_ms=duration_ms,
        )
        recorder.sent(
            job.job_id,
            provider.name,
            delivered.queue_id,
            delivered.reply,
            charged=attempt_no - job.attempts,
            accepted_at=job.created_at,
        )
        logger.info(
            "event=sent outcome=sent job_id=%d provider=%s queue_id=%s attempt=%d duration_ms=%d",
            job.job_id,
            provider.name,
            delivered.queue_id,
            attempt_no,
            duration_ms,
        )
        return None

    def _after_failure(
        self,
        job: ClaimedJob,
        provider: str,
        error: SendError,
        charged: int,
        recorder: OutcomeRecorder,
    ) -> None:
        decision = failure_policy.after_failure(
            error, provider, job.attempts + charged, self._settings, self._rng
        )
        if isinstance(decision, failure_policy.FailNow):
            if decision.suppress:
                recorder.suppress(job.recipient, "hard_bounce", decision.reason)
            recorder.failed(job.job_id, provider, decision.reason, charged=charged)
            logger.info(
                "event=failed outcome=failed job_id=%d provider=%s reason=%r",
                job.job_id,
                provider,
                decision.reason,
            )
            return
        recorder.retry(
            job,
            error=decision.reason,
            charged=charged,
            tier_seconds=decision.tier_seconds,
            failed_provider=provider,
        )
        logger.info(
            "event=retry outcome=retry job_id=%d provider=%s delay_s=%d attempts=%d",
            job.job_id,
            provider,
            decision.tier_seconds,
            job.attempts + charged,
        )

    def _ms_since(self, started: float) -> int:
        return int((self._monotonic() - started) * 1000)

    def _wait_for_capacity(self, job: ClaimedJob, recorder: OutcomeRecorder, wait: float) -> None:
        # No attempt is charged: the job did not fail, nobody could take it yet.
        tier = retry.pick_tier(
            max(wait, NO_PROVIDER_MIN_WAIT_SECONDS), self._settings.retry_tiers_seconds
        )
        recorder.retry(
            job,
            error="waiting: no provider available",
            charged=0,
            tier_seconds=tier,
            failed_provider=job.failed_provider,
        )
        logger.info("event=wait outcome=wait job_id=%d delay_s=%d", job.job_id, tier)
