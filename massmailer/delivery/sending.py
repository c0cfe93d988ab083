"""Send jobs on a sender thread: choose a provider, wait for its rate slot, send, fail over.

A sender thread takes a run of a chunk's jobs. Each goes as one job alone would; where its
provider can take the jobs after it at once, they follow on the same session, each envelope
written behind the previous message's final dot (RFC 2920 3.1): one round trip and one write a
message instead of two, and one thread hand-off for the run instead of one per job.

Runs off the slot's thread, so it never touches the database: it returns `JobResult`s that the
slot records. Everything here must be safe to run on many threads at once.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from massmailer.delivery import retry
from massmailer.delivery.destinations import DestinationLimits, default_destinations
from massmailer.delivery.dkim import DkimSigner
from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.picker import NoProvider, ProviderPicker, Reservation
from massmailer.delivery.providers.base import (
    Delivered,
    Envelope,
    FailureKind,
    ProviderConfig,
    SendError,
)
from massmailer.delivery.providers.pool import PoolRegistry, PoolTimeout
from massmailer.jobstore import ClaimedJob
from massmailer.outages import OUTAGE_ERRORS

logger = logging.getLogger(__name__)

# Rate slots are reserved at most this far ahead, so no process can run the shared schedule far
# ahead of the others; urgent mail may reserve further ahead, so it gets the next slots first.
BASE_HORIZON_SECONDS = 1.0
HORIZON_PER_PRIORITY_SECONDS = 0.25
# While a provider's schedule is full, look again this often (jittered) for a slot. Only a wait
# this near is polled in the process; an open breaker's cool-down or a daily cap goes to a tier.
RATE_POLL_SECONDS = 0.2
NEAR_WAIT_SECONDS = 2.0
# A sender woken this late for its slot still sends on it (scheduling jitter, not a stall).
MIN_LATE_SLOT_SECONDS = 0.04
# After this many slots given up for lateness, send on the next one however late: a process that
# is simply overloaded must still make progress.
MAX_LATE_SLOTS = 3
# A throttled job tries again in the process (on a fresh slot of the cut rate, on another
# provider if one can take it) this many times, then waits in the shortest delay tier. Each
# throttled try is an attempt row but charges nothing.
MAX_THROTTLED_TRIES = 3
_UNCHARGED_OUTCOMES = frozenset(str(kind) for kind in retry.UNCHARGED_KINDS)
# A chunk is cut into about this many runs, which all go at once (within the 64 sender threads).
# A run's jobs go one after another and the slot waits for its whole chunk, so against a distant
# provider a chunk lasts about one run's round trips: the number of runs, not their length, sets
# the sessions a slot keeps busy. Longer runs save CPU against a fast provider, so big chunks get
# them (800 in runs of 16 against 400 in runs of 8: +12 % at the fast sink, the same at 20 ms).
RUNS_PER_CHUNK = 50
# Beyond this, a run's length costs more at a distance than it saves (1,200 in runs of 24 was
# slower at the fast sink too, bench/README.md).
MAX_RUN_LENGTH = 16


def run_length(chunk_length: int) -> int:
    """How many jobs one sender thread takes from a chunk of this many: 1 for a small chunk."""
    return max(1, min(MAX_RUN_LENGTH, chunk_length // RUNS_PER_CHUNK))


def late_slot_tolerance(provider: ProviderConfig) -> float:
    """How late a send may start after its reserved slot before the slot is given up.

    One slot's spacing, but never less than a thread's ordinary wake-up jitter: at a high rate
    every sleeper would otherwise count as late and take fresh slots forever.
    """
    rate = provider.rate_per_second
    return max(MIN_LATE_SLOT_SECONDS, min(0.1, 1 / rate)) if rate else float("inf")


def reservation_horizon(priority: int) -> float:
    """How far ahead a job of this priority may reserve a rate slot."""
    return BASE_HORIZON_SECONDS + HORIZON_PER_PRIORITY_SECONDS * max(priority, 0)


@dataclass(frozen=True)
class Attempt:
    """One try on one provider, as the email_attempts row records it."""

    attempt_no: int
    provider: str
    outcome: str
    smtp_code: int | None = None
    enhanced: str | None = None
    error: str | None = None
    duration_ms: int = 0


@dataclass
class JobResult:
    """What became of one job on its sender thread.

    Exactly one of `delivered`, `error`, `wait_seconds` or `not_started` describes the end:
    sent; failed on `provider` with `error`; nobody could take it for `wait_seconds`; or never
    started (stopping, lease or budget too short, an outage before any send) and to be released.
    """

    job: ClaimedJob
    attempts: list[Attempt] = field(default_factory=list)
    provider: str | None = None
    delivered: Delivered | None = None
    error: SendError | None = None
    wait_seconds: float | None = None
    not_started: str | None = None
    outage: BaseException | None = None
    bug: Exception | None = None  # sending it raised: a fault of ours, not the provider's

    @property
    def charged(self) -> int:
        """Tries that count toward max attempts: every provider tried, except uncharged kinds
        (nothing sent, or a throttle reply: retry.UNCHARGED_KINDS)."""
        return sum(1 for a in self.attempts if a.outcome not in _UNCHARGED_OUTCOMES)


@dataclass(frozen=True)
class Outgoing:
    """A composed job, ready for a sender thread: its envelope sender and message bytes."""

    job: ClaimedJob
    mail_from: str
    data: bytes


@dataclass
class _Tries:
    """One job between its tries on a sender thread."""

    outgoing: Outgoing
    result: JobResult
    tried: list[str] = field(default_factory=list)  # failed this job: strictly avoided from now
    throttled: list[str] = field(default_factory=list)  # asked us to slow down: avoided if can


@dataclass(frozen=True)
class SendWindow:
    """Whether a send may start now: the chunk's stop signal, its budget and its lease."""

    may_start: Callable[[float], str | None]  # needed seconds -> None, or why not
    deadline_seconds: float  # the wall-clock bound of one SMTP transaction


class JobSender:
    """The per-process procedure that takes one composed job to a provider."""

    def __init__(
        self,
        picker: ProviderPicker,
        limits: Limits,
        pools: PoolRegistry,
        *,
        rate_wait_seconds: float,
        signer: DkimSigner | None = None,
        destinations: DestinationLimits | None = None,
        on_stream: Callable[[str, int, float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._picker = picker
        # Told each stream's provider, replies and seconds from the first reply to the last.
        self._on_stream = on_stream or (lambda provider, replies, seconds: None)
        self._signer = signer
        self._destinations = destinations or default_destinations()
        self._limits = limits
        self._pools = pools
        self._rate_wait_seconds = rate_wait_seconds
        self._monotonic = monotonic
        self._sleep = sleep

    def send(self, job: ClaimedJob, mail_from: str, data: bytes, window: SendWindow) -> JobResult:
        """Deliver job on the first provider that can take it; fail over on provider faults."""
        result = self.send_run([Outgoing(job, mail_from, data)], window)[0]
        if result.bug is not None:
            raise result.bug
        return result

    def send_run(self, run: Sequence[Outgoing], window: SendWindow) -> list[JobResult]:
        """Deliver each job of the run, in order, chaining on a session the jobs that can follow.

        Never raises for one job's sake: a job whose send raised comes back with `bug` set, so
        that the others' outcomes (a 250 among them) are still recorded.
        """
        everyone = [_Tries(outgoing, JobResult(outgoing.job)) for outgoing in run]
        queue = deque(everyone)
        while queue:
            tries = queue.popleft()
            result = tries.result
            try:
                self._send(tries, window, queue)
            except OUTAGE_ERRORS as exc:
                # Redis (limits, breakers, slots) stopped answering before anything was sent.
                if result.delivered is None:
                    result.outage = exc
                    result.not_started = result.not_started or "outage"
            except Exception as exc:
                result.bug = exc
        return [tries.result for tries in everyone]

    def _send(self, tries: _Tries, window: SendWindow, queue: deque[_Tries]) -> None:
        result = tries.result
        job = result.job
        tried, throttled = tries.tried, tries.throttled
        late_slots = 0
        gives_up = self._monotonic() + self._rate_wait_seconds
        horizon = reservation_horizon(job.priority)
        destination = self._destinations.limit_for(job.recipient)
        subject = destination.rate_subject if destination else None
        while True:
            # First choice avoids the provider that failed this job last time if anyone else can
            # take it; a failover within this try never goes back to a provider that just failed.
            avoid = tried or throttled or [job.failed_provider or ""]
            choice = self._reserve(subject, avoid, strict=bool(tried), horizon_seconds=horizon)
            wait = choice.wait_seconds
            if isinstance(choice, Reservation):
                why_not = window.may_start(wait + window.deadline_seconds)
                if why_not is not None:
                    result.not_started = why_not  # the unused slot costs only itself
                    return
                slot = self._monotonic() + wait
                if wait > 0:
                    self._pools.get(choice.provider).prewarm()
                    # Holding no session: a near rate slot is worth waiting for. (A slot due
                    # now costs no sleep call: even sleep(0) gives up the GIL and the core.)
                    self._sleep(max(0.0, slot - self._monotonic()))
                tolerance = late_slot_tolerance(choice.provider)
                if subject is not None:  # the tighter schedule decides what counts as late
                    tolerance = min(tolerance, late_slot_tolerance(subject))
                late = self._monotonic() - slot > tolerance
                if late and late_slots < MAX_LATE_SLOTS:
                    # This process stalled past its slot: sending now would bunch with the
                    # slots after it, so take a fresh one instead.
                    late_slots += 1
                    continue
                wait = self._picker.admit(choice.provider)
                if wait == 0:
                    # Others follow only a provider drawn freely by weight: one that this job
                    # fell back to after a failure would take the rest of the run with it.
                    fresh = not (tried or throttled or job.failed_provider)
                    error = self._try(tries, choice.provider, window, queue if fresh else deque())
                    if isinstance(error, PoolTimeout):
                        # Every session this provider allows (fleet-wide) is busy: capacity,
                        # not failure. Look again soon rather than park the job in a tier.
                        result.wait_seconds = None
                        wait = RATE_POLL_SECONDS
                    elif error is None:
                        return
                    elif self._tries_again(tries, choice.provider, error):
                        continue
                    else:
                        return
            if self._wait_in_process(wait, gives_up, window):
                continue
            if result.error is None:
                result.wait_seconds = wait  # nothing tried: a wait for capacity, not a failure
            return

    def _reserve(
        self,
        subject: ProviderConfig | None,
        avoid: list[str],
        *,
        strict: bool,
        horizon_seconds: float,
    ) -> Reservation | NoProvider:
        """Reserve the destination's slot (`subject`: its group's schedule, if limited), then a
        provider's.

        The send waits for the later of the two. Destination first: its limit is the scarce one,
        and a refused reservation takes nothing, so a backlog for a busy destination polls
        without spending provider slots that other destinations' mail could use. Only when no
        provider can take the job after the destination slot was taken does that slot lapse
        unused. Two calls, not one script: on Redis Cluster the two keys live in different slots.
        """
        if subject is None:
            return self._picker.reserve(avoid, strict=strict, horizon_seconds=horizon_seconds)
        held = self._limits.reserve_rate(subject, horizon_seconds)
        if held is None:
            # Its schedule is full beyond the horizon: a near wait is polled here, a far one
            # sends the job to a delay tier uncharged (`_wait_in_process`).
            return NoProvider(max(self._limits.capacity_wait(subject), RATE_POLL_SECONDS))
        choice = self._picker.reserve(avoid, strict=strict, horizon_seconds=horizon_seconds)
        if isinstance(choice, NoProvider):
            return choice
        return replace(choice, wait_seconds=max(held, choice.wait_seconds))

    def _wait_in_process(self, wait: float, gives_up: float, window: SendWindow) -> bool:
        """Sleep until capacity may be free if that is soon; False to hand the job to a tier.

        Far waits (an open breaker's cool-down, a daily cap) go to a delay tier; a busy rate
        schedule is polled here, holding no session, while the chunk's budget allows.
        """
        if not 0 < wait <= NEAR_WAIT_SECONDS or self._monotonic() + wait > gives_up:
            return False
        if window.may_start(wait + window.deadline_seconds) is not None:
            return False
        self._sleep(min(wait, RATE_POLL_SECONDS) * (0.5 + random.random()))
        return True

    def _try(
        self, tries: _Tries, provider: ProviderConfig, window: SendWindow, queue: deque[_Tries]
    ) -> SendError | None:
        """Send once through provider, with what can follow; return the error, None once sent.

        The jobs that follow on the session are settled here: sent, failed for good, or put
        back at the head of the queue to go on from that try (fail over, or a fresh slot).
        """
        result = tries.result
        started = self._monotonic()
        taken: dict[int, tuple[_Tries, float]] = {result.job.job_id: (tries, started)}
        settled: list[tuple[_Tries, SendError | None]] = []
        try:
            with self._pools.get(provider).session() as smtp:
                leader = self._envelope(tries, provider)
                followers = self._followers(provider, queue, window, taken, settled)
                stream = smtp.send_many(
                    itertools.chain([leader], followers), each_within=window.deadline_seconds
                )
                first_reply = last_reply = 0.0
                for envelope, outcome in stream:
                    state, began = taken[envelope.key]  # type: ignore[index]
                    last_reply = self._monotonic()
                    first_reply = first_reply or last_reply
                    duration_ms = _ms_between(began, last_reply)
                    # Recorded and logged as each reply comes, as a job sent alone is.
                    error = self._settle(state.result, provider, outcome, duration_ms)
                    settled.append((state, error))
            self._on_stream(provider.name, len(settled), last_reply - first_reply)
        except PoolTimeout as busy:
            # Every session to this provider is busy: capacity, not failure; nothing is recorded.
            if result.error is None:
                result.wait_seconds = 0.0
            return busy
        except SendError as error:  # the session would not open: only this job was tried
            settled.append((tries, self._settle(result, provider, error, self._ms_since(started))))
        except Exception as exc:
            # Bookkeeping failed while the pool took the session back after the provider's
            # 250s (Redis away, READONLY, OOM...): what was delivered stays delivered, and
            # nothing may release, retry or re-send it. A failure mid-stream leaves the jobs
            # written but not answered unknown.
            for state in self._unanswered(tries, taken, settled, exc):
                lost = SendError(
                    FailureKind.UNKNOWN_OUTCOME, f"the stream failed: {type(exc).__name__}"
                )
                settled.append((state, self._settle(state.result, provider, lost, 0)))
            logger.warning("event=bookkeeping_failed_after_send provider=%s", provider.name)
        return self._after_stream(tries, provider, settled, queue)

    def _envelope(self, tries: _Tries, provider: ProviderConfig) -> Envelope:
        outgoing = tries.outgoing
        data = outgoing.data
        if self._signer:
            # Signed per try, right before it goes: which headers h= may cover depends on the
            # provider (dkim_exclude_headers), and t= is the time of sending.
            data = self._signer.sign(data, outgoing.job.sender, provider.dkim_exclude_headers)
        return Envelope(outgoing.mail_from, outgoing.job.recipient, data, key=outgoing.job.job_id)

    def _followers(
        self,
        provider: ProviderConfig,
        queue: deque[_Tries],
        window: SendWindow,
        taken: dict[int, tuple[_Tries, float]],
        settled: list[tuple[_Tries, SendError | None]],
    ) -> Iterator[Envelope]:
        """The next jobs of the run that provider can take now, each as its turn to go comes.

        A follower takes the rate slot and the admission it would take alone, but only if they
        are free at once: the session is open and a transaction in flight, so nothing here
        waits. Following stops at the first refusal among the tries `settled` so far (the rest
        wait for its bookkeeping: a throttle cuts the rate, a fault counts toward the breaker).
        Any failure here only ends the following; the job waits for its own turn.
        """
        try:
            while queue and self._may_follow(queue[0], provider):
                if any(error is not None for _, error in settled):
                    return
                if window.may_start(window.deadline_seconds) is not None:
                    return
                if not self._picker.reserve_now(provider):
                    return
                if self._picker.admit(provider) != 0:
                    return  # its slot lapses unused, as any unused reservation does
                envelope = self._envelope(queue[0], provider)
                tries = queue.popleft()  # only now: a job whose envelope failed stays queued
                taken[tries.result.job.job_id] = (tries, self._monotonic())
                yield envelope
        except Exception:
            logger.warning("event=following_stopped provider=%s", provider.name, exc_info=True)

    def _may_follow(self, tries: _Tries, provider: ProviderConfig) -> bool:
        job = tries.result.job
        name = provider.name
        return (
            name not in tries.tried
            and name not in tries.throttled
            and job.failed_provider != name
            # A limited destination's own schedule is reserved by the job's own turn.
            and self._destinations.limit_for(job.recipient) is None
        )

    @staticmethod
    def _unanswered(
        leader: _Tries,
        taken: dict[int, tuple[_Tries, float]],
        settled: list[tuple[_Tries, SendError | None]],
        exc: Exception,
    ) -> list[_Tries]:
        """The followers written but not answered when the stream failed with exc."""
        answered = {id(state) for state, _ in settled}
        if id(leader) not in answered:
            raise exc  # a fault of ours before its outcome: the slot charges it
        return [state for state, _ in taken.values() if id(state) not in answered]

    def _after_stream(
        self,
        tries: _Tries,
        provider: ProviderConfig,
        settled: list[tuple[_Tries, SendError | None]],
        queue: deque[_Tries],
    ) -> SendError | None:
        """Return the leader's error; put back the followers that go on from their try."""
        leader_error: SendError | None = None
        again: list[_Tries] = []
        for state, error in settled:
            if state is tries:
                leader_error = error
            elif error is not None and self._tries_again(state, provider, error):
                again.append(state)
        queue.extendleft(reversed(again))  # their turn comes before the jobs not yet tried
        return leader_error

    @staticmethod
    def _tries_again(tries: _Tries, provider: ProviderConfig, error: SendError) -> bool:
        """Note a failed try against its provider; True if the job tries again on this thread.

        A provider fault says nothing about the message: fail over. A throttle asks for a
        fresh slot of the cut rate, or another provider, up to MAX_THROTTLED_TRIES; then the job
        goes, uncharged, to the shortest delay tier. Anything else ends the job's tries here.
        """
        if error.kind is FailureKind.PROVIDER_FAULT:
            tries.tried.append(provider.name)
            return True
        if error.kind is FailureKind.THROTTLED:
            tries.throttled.append(provider.name)
            return len(tries.throttled) < MAX_THROTTLED_TRIES
        return False

    def _settle(
        self,
        result: JobResult,
        provider: ProviderConfig,
        outcome: Delivered | SendError,
        duration_ms: int,
    ) -> SendError | None:
        """Record one try on result: its attempt, the breaker, the log line."""
        job = result.job
        attempt_no = job.attempts + len(result.attempts) + 1
        if isinstance(outcome, SendError):
            error = outcome
            result.provider, result.error = provider.name, error
            self._note_health(provider, error, job.recipient)
            result.attempts.append(
                Attempt(
                    attempt_no,
                    provider.name,
                    str(error.kind),
                    error.smtp_code,
                    error.enhanced,
                    error.message[:1000],
                    duration_ms,
                )
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
        delivered = outcome
        result.provider, result.delivered, result.error = provider.name, delivered, None
        result.attempts.append(
            Attempt(attempt_no, provider.name, "sent", delivered.smtp_code, None, None, duration_ms)
        )
        self._after_success(provider, job.recipient)
        logger.info(
            "event=sent outcome=sent job_id=%d provider=%s queue_id=%s attempt=%d duration_ms=%d",
            job.job_id,
            provider.name,
            delivered.queue_id,
            attempt_no,
            duration_ms,
        )
        return None

    def _note_health(self, provider: ProviderConfig, error: SendError, recipient: str) -> None:
        try:
            if error.kind is FailureKind.PROVIDER_FAULT:
                self._limits.record_failure(provider.name)
            elif error.smtp_code is not None:
                # It answered (a 4xx or a bounce): reachable and accepting us, so the breaker
                # may close, and a half-open probe is not left hanging.
                self._limits.record_success(provider.name)
            if error.kind is FailureKind.THROTTLED:
                # Not a fault: it asks us to slow down. Cut its rate fleet-wide (AIMD).
                rate = self._limits.record_throttle(provider)
                logger.info(
                    "event=throttled provider=%s code=%s enhanced=%s effective_rate=%s",
                    provider.name,
                    error.smtp_code,
                    error.enhanced,
                    "unlimited" if rate is None else f"{rate:.3g}",
                )
                self._throttle_destination(recipient)
        except OUTAGE_ERRORS:
            logger.warning("event=breaker_update_failed provider=%s", provider.name)

    def _throttle_destination(self, recipient: str) -> None:
        """A throttle reply to a limited group's recipient cuts that group's rate too (AIMD).

        The reply cannot say whose limit it was (the provider's account or the destination's
        MTA), so both are cut; each recovers on its own successes.
        """
        destination = self._destinations.limit_for(recipient)
        if destination is not None:
            rate = self._limits.record_throttle(destination.rate_subject)
            logger.info(
                "event=destination_throttled group=%s effective_rate=%.3g", destination.group, rate
            )

    def _after_success(self, provider: ProviderConfig, recipient: str) -> None:
        # After a 250 no Redis error (an outage, READONLY on a demoted replica, OOM) may turn a
        # delivered message into a retry or a bug report: the breaker update is best effort.
        try:
            self._limits.record_success(provider.name)
            self._limits.note_sent(provider)  # raises a throttled rate back, batched per second
            destination = self._destinations.limit_for(recipient)
            if destination is not None:
                self._limits.note_sent(destination.rate_subject)
        except Exception as exc:
            name, failure = provider.name, type(exc).__name__
            logger.warning("event=breaker_update_failed provider=%s error=%s", name, failure)

    def _ms_since(self, started: float) -> int:
        return _ms_between(started, self._monotonic())


def _ms_between(started: float, ended: float) -> int:
    return int((ended - started) * 1000)
