"""Deliver a chunk of jobs: claim, skip the suppressed, send concurrently, record as it goes.

The slot's own thread claims, composes and records; the chunk's messages are sent at once by the
process's sender threads (`SenderThreads`), a run of a few jobs each (`sending.run_length`), so
one chunk keeps many SMTP sessions busy. Only this thread touches the database session and the
outcome recorder.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from massmailer import jobstore, suppressions
from massmailer.config import Settings
from massmailer.delivery import failure_policy, retry
from massmailer.delivery.compose import Composer
from massmailer.delivery.dkim import DkimSigner
from massmailer.delivery.leases import Lease, LeaseKeeper
from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.message import build_message
from massmailer.delivery.outcomes import (
    FLUSH_EVERY_SECONDS,
    OutcomeRecorder,
    flush_until_recorded,
)
from massmailer.delivery.picker import ProviderPicker
from massmailer.delivery.providers.base import ProviderConfig, SendError
from massmailer.delivery.providers.pool import PoolRegistry
from massmailer.delivery.sender_threads import SenderThreads
from massmailer.delivery.sending import JobResult, JobSender, Outgoing, SendWindow, run_length
from massmailer.delivery.shutdown import STOPPING
from massmailer.jobstore import ClaimedJob, Dispatch
from massmailer.models.types import utcnow

logger = logging.getLogger(__name__)

# The smallest wait when no provider can take a job: the first delay tier.
NO_PROVIDER_MIN_WAIT_SECONDS = 1.0
# A send starts only if the lease outlives its deadline by this much, so the outcome can be written
# while the claim is still ours.
LEASE_MARGIN_SECONDS = 3.0


@dataclass
class ChunkReport:
    """What a chunk did, and what must be published again (after the outcomes are committed)."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retries: list[tuple[int, Dispatch]] = field(default_factory=list)
    released: list[Dispatch] = field(default_factory=list)


@dataclass
class _Chunk:
    """One chunk in flight: its claim, its recorder and its sends."""

    session: Session
    token: str
    claimed: list[ClaimedJob]
    recorder: OutcomeRecorder
    window: SendWindow
    halt: threading.Event
    lease: Lease
    inflight: dict[Future[list[JobResult]], list[ClaimedJob]] = field(default_factory=dict)
    # Each run's future as it completes: the slot takes them in O(1), where wait() over every
    # run in flight re-armed a waiter on each of them per completion.
    completed: queue.SimpleQueue[Future[list[JobResult]]] = field(default_factory=queue.SimpleQueue)
    handed: set[int] = field(default_factory=set)  # ids given to a sender thread
    release: list[ClaimedJob] = field(default_factory=list)
    settled_early: set[int] = field(default_factory=set)  # suppressed or unbuildable
    outage: BaseException | None = None
    bug: BaseException | None = None


def _completed(
    completed: queue.SimpleQueue[Future[list[JobResult]]], timeout: float
) -> list[Future[list[JobResult]]]:
    """The futures completed so far, waiting up to timeout for the first one."""
    try:
        done = [completed.get(timeout=timeout)]
    except queue.Empty:
        return []
    with contextlib.suppress(queue.Empty):
        while True:
            done.append(completed.get_nowait())
    return done


class DeliveryService:
    """Steps 3-7 of the design: everything a send task does, with its collaborators injected."""

    def __init__(
        self,
        settings: Settings,
        providers: Sequence[ProviderConfig],
        pools: PoolRegistry,
        limits: Limits,
        *,
        senders: SenderThreads | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._limits = limits
        self._rng = rng or random.Random()
        self._clock = clock
        self._monotonic = monotonic
        self._senders = senders or SenderThreads(
            settings.sender_threads, settings.sender_threads_min
        )
        picker = ProviderPicker(providers, limits, self._rng)
        self._sender = JobSender(
            picker,
            limits,
            pools,
            rate_wait_seconds=settings.rate_wait_seconds,
            signer=DkimSigner(settings.dkim_keys),
            destinations=settings.destinations,
            on_stream=self._senders.note_stream,
        )
        self._composer = Composer(settings)
        self._keeper: LeaseKeeper | None = None
        self._keeper_lock = threading.Lock()

    def deliver(
        self, session: Session, job_ids: Sequence[int], *, budget_seconds: float
    ) -> ChunkReport:
        """Send the chunk's claimable jobs concurrently; start no send past budget_seconds."""
        started = self._monotonic()
        token = uuid.uuid4().hex
        claimed = jobstore.claim(session, job_ids, token, self._settings.lease_seconds)
        report = ChunkReport(claimed=len(claimed))
        if not claimed:
            return report
        # Renewed from its own thread and connection while the chunk makes progress.
        lease = self._lease_keeper(session).hold(token, claimed_at=started)
        halt = threading.Event()
        window = SendWindow(
            may_start=lambda need: self._why_not(need, started + budget_seconds, lease, halt),
            deadline_seconds=self._settings.send_deadline_seconds,
        )
        recorder = OutcomeRecorder(session, token, self._clock, self._monotonic)
        chunk = _Chunk(session, token, claimed, recorder, window, halt, lease)
        try:
            self._start_all(session, chunk)
            self._collect(chunk)
        finally:
            halt.set()
            try:
                self._finish(session, chunk, report)
            finally:
                lease.release()
        if chunk.bug is not None:
            raise chunk.bug
        if chunk.outage is not None:
            raise chunk.outage
        return report

    def _lease_keeper(self, session: Session) -> LeaseKeeper:
        with self._keeper_lock:
            if self._keeper is None:
                self._keeper = LeaseKeeper(
                    session.get_bind(), self._settings.lease_seconds, monotonic=self._monotonic
                )
            return self._keeper

    def _why_not(
        self, needed: float, budget_ends: float, lease: Lease, halt: threading.Event
    ) -> str | None:
        """None if a send needing `needed` seconds may start now, else the reason it may not."""
        if STOPPING.is_set():
            return "stopping"
        if halt.is_set():
            return "halted"
        if self._monotonic() + needed > budget_ends:
            return "budget"
        if lease.remaining() < needed + LEASE_MARGIN_SECONDS:
            return "lease"
        return None

    def _start_all(self, session: Session, chunk: _Chunk) -> None:
        """Compose each job and hand it to a sender thread as soon as its run is ready."""
        self._composer.load(session, chunk.claimed)
        recipients = (j.recipient for j in chunk.claimed)
        suppressed = suppressions.suppressed_among(session, recipients)
        length = run_length(len(chunk.claimed))
        run: list[Outgoing] = []
        for job in chunk.claimed:
            if job.recipient.lower() in suppressed:
                chunk.recorder.failed(job.job_id, None, "suppressed", charged=0)
                chunk.settled_early.add(job.job_id)
                continue
            try:
                data = build_message(self._composer.compose(job, self._clock()))
            except (ValueError, UnicodeError) as exc:
                chunk.recorder.failed(job.job_id, None, f"bad_data: {exc}", charged=0)
                chunk.settled_early.add(job.job_id)
                continue
            run.append(Outgoing(job, self._composer.mail_from(job), data))
            if len(run) == length:
                self._hand_over(chunk, run)
                run = []
        if run:
            self._hand_over(chunk, run)

    def _hand_over(self, chunk: _Chunk, run: list[Outgoing]) -> None:
        future = self._senders.submit(self._sender.send_run, run, chunk.window)
        jobs = [outgoing.job for outgoing in run]
        chunk.inflight[future] = jobs
        future.add_done_callback(chunk.completed.put)
        chunk.handed.update(job.job_id for job in jobs)

    def _collect(self, chunk: _Chunk) -> None:
        """Record results as they come; flush every second or few dozen outcomes."""
        while chunk.inflight:
            done = _completed(chunk.completed, timeout=FLUSH_EVERY_SECONDS)
            for future in done:
                self._record_run(chunk, chunk.inflight.pop(future), future)
            if done:
                chunk.lease.progress()
            try:
                chunk.recorder.maybe_flush()
            except SQLAlchemyError:
                # The buffer survives a failed flush: the next one (or the final) writes it.
                logger.warning("event=flush_failed pending=%d", chunk.recorder.pending())
                with contextlib.suppress(SQLAlchemyError):
                    chunk.session.rollback()

    def _record_run(
        self, chunk: _Chunk, jobs: list[ClaimedJob], future: Future[list[JobResult]]
    ) -> None:
        try:
            results = future.result()
        except Exception as exc:  # send_run answers for each job; this is a bug around it
            results = [JobResult(job, bug=exc) for job in jobs]
        for result in results:
            self._record(chunk, result)

    def _record(self, chunk: _Chunk, result: JobResult) -> None:
        job = result.job
        if result.bug is not None:
            # A bug, not a send failure: charge this job (so a poison job ends FAILED after max
            # attempts), start nothing more, and fail the task visibly once the chunk is written.
            self._internal_error(job, chunk.recorder, result.bug)
            chunk.halt.set()
            chunk.bug = chunk.bug or result.bug
            return
        recorder = chunk.recorder
        for a in result.attempts:
            recorder.attempt(
                job.job_id,
                a.attempt_no,
                a.provider,
                a.outcome,
                smtp_code=a.smtp_code,
                enhanced=a.enhanced,
                error=a.error,
                duration_ms=a.duration_ms,
            )
        if result.delivered is not None:
            delivered = result.delivered
            recorder.sent(
                job.job_id,
                delivered.provider,
                delivered.queue_id,
                delivered.reply,
                charged=result.charged,
                accepted_at=job.created_at,
                priority=job.priority,
            )
        elif result.error is not None and result.provider is not None:
            self._after_failure(job, result.provider, result.error, result.charged, recorder)
        elif result.wait_seconds is not None:
            self._wait_for_capacity(job, recorder, result.wait_seconds)
        else:
            if result.outage is not None:
                chunk.outage = chunk.outage or result.outage
                chunk.halt.set()  # Redis is failing: start no more sends in this chunk
            chunk.release.append(job)
            logger.info(
                "event=released outcome=released job_id=%d reason=%s",
                job.job_id,
                result.not_started,
            )

    def _finish(self, session: Session, chunk: _Chunk, report: ChunkReport) -> None:
        """Wait for sends still in flight, write every outcome, give back what never started."""
        # Sends still in flight (the chunk broke early) end within their deadline: record them.
        for future, jobs in list(chunk.inflight.items()):
            with contextlib.suppress(Exception):
                future.result()
            self._record_run(chunk, jobs, future)
        chunk.inflight.clear()
        # Jobs the chunk never handed to a sender (it broke while composing) go back too.
        settled = chunk.handed | chunk.settled_early
        chunk.release += [j for j in chunk.claimed if j.job_id not in settled]
        self._flush(chunk.recorder)
        if chunk.release:
            report.released = self._release(session, chunk.token, chunk.release)
        report.sent = chunk.recorder.counts["sent"]
        report.failed = chunk.recorder.counts["failed"]
        report.retries = chunk.recorder.retries
        self._drop_cancelled(session, report, {j.job_id for j in chunk.claimed if j.batch_id})

    def _flush(self, recorder: OutcomeRecorder) -> None:
        """Write what the chunk did, retrying while the database is away (outcomes are kept).

        After a provider's 250 the outcome must land, or the job is sent again after its lease
        and grace; the error that stops us propagates (the task requeues its message).
        """
        patience = self._settings.lease_seconds + jobstore.LEASE_GRACE_SECONDS
        if not flush_until_recorded(recorder, give_up_after=patience):
            recorder.flush()  # a last try; its error fails the chunk

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

    def _release(self, session: Session, token: str, jobs: list[ClaimedJob]) -> list[Dispatch]:
        try:
            jobstore.release(session, token, (j.job_id for j in jobs), self._clock())
            session.commit()
        except SQLAlchemyError:
            # Their leases expire and the sweeper takes them.
            logger.warning("event=release_failed jobs=%d", len(jobs))
            with contextlib.suppress(SQLAlchemyError):
                session.rollback()
            return []
        return [Dispatch(j.job_id, j.priority, j.dispatch_seq + 1) for j in jobs]

    def _internal_error(self, job: ClaimedJob, recorder: OutcomeRecorder, exc: Exception) -> None:
        reason = f"internal error: {type(exc).__name__}: {exc}"[:1000]
        logger.error("event=internal_error job_id=%d", job.job_id, exc_info=exc)
        if job.attempts + 1 >= self._settings.max_attempts:
            recorder.failed(job.job_id, None, reason, charged=1)
        else:
            tier = retry.pick_tier(
                self._settings.backoff_base_seconds, self._settings.retry_tiers_seconds
            )
            recorder.retry(
                job, error=reason, charged=1, tier_seconds=tier, failed_provider=job.failed_provider
            )

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
        if decision.possible_duplicate:
            # The provider may hold the message already (no reply to the end of data): a retry
            # may deliver it twice. Counted among the duplicate windows (docs/architecture.md).
            logger.warning(
                "event=possible_duplicate job_id=%d provider=%s kind=%s",
                job.job_id,
                provider,
                error.kind,
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
