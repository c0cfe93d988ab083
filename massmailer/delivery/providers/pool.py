"""Per-process pools of SMTP sessions, one per provider, reused across messages.

Build pools lazily in the process that sends (after Celery's or gunicorn's fork), never at import:
a socket shared by two processes interleaves their SMTP conversations.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from massmailer.delivery.providers.base import FailureKind, ProviderConfig, SendError, TlsMode
from massmailer.delivery.providers.smtp import SmtpSession, make_tls_context
from massmailer.delivery.throttle import ThrottleRules

logger = logging.getLogger(__name__)


class PoolTimeout(SendError):
    """No session came free in time: every connection this process may open is busy.

    A TRANSIENT SendError so that callers that only know SendError retry; a caller that
    tells "no capacity now" apart from a failed try can catch this one and not charge an attempt.
    """

    def __init__(self, message: str) -> None:
        super().__init__(FailureKind.TRANSIENT, message)


class ConnectionSlots(Protocol):
    """A provider's connection cap across the fleet (massmailer.delivery.limits implements it)."""

    def acquire_connection(self, provider: ProviderConfig, holder: str = "") -> str | None: ...

    def connection_demand(self, provider: ProviderConfig, holder: str) -> int: ...

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool: ...

    def release_connection(self, provider: ProviderConfig, token: str) -> None: ...


# How long to keep asking for a fleet-wide slot before giving the job back as "no capacity now".
FLEET_SLOT_WAIT_SECONDS = 2.0
FLEET_SLOT_POLL_SECONDS = 0.05
# Slot leases (20 s) are refreshed this often, by the registry's maintenance thread or when a
# session is lent, so a live process keeps its slots and a dead one's lapse soon.
SLOT_REFRESH_EVERY_SECONDS = 5.0
# The maintenance thread's period: how soon a waiting process gets a slot another one gives back.
MAINTAIN_EVERY_SECONDS = 0.5


class SessionPool:
    """Thread-safe pool of open SmtpSessions to one provider, for this process only.

    With `slots`, every open session also holds a fleet-wide slot, so max_connections caps the
    provider's connections across all processes and hosts, not per process. A process refused a
    slot says so; while anyone waits, a pool keeps no more than its share (the cap divided among
    itself and the waiters) and closes sessions beyond it as they come back or sit idle, so one
    process's idle sessions never starve the others.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        max_idle_seconds: float = 15.0,
        max_age_seconds: float = 600.0,
        max_messages_per_session: int = 1000,
        acquire_timeout_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        slots: ConnectionSlots | None = None,
        sleep: Callable[[float], None] = time.sleep,
        throttle_rules: ThrottleRules | None = None,
    ) -> None:
        self.config = config
        self._slots = slots
        self._throttle_rules = throttle_rules
        self._sleep = sleep
        self._slot_tokens: dict[SmtpSession, tuple[str, float]] = {}  # token, last refresh
        self.max_idle_seconds = max_idle_seconds
        self.max_age_seconds = max_age_seconds
        self.max_messages_per_session = max_messages_per_session
        self.acquire_timeout_seconds = (
            config.timeout_seconds if acquire_timeout_seconds is None else acquire_timeout_seconds
        )
        self._clock = clock
        self._pid = os.getpid()
        self._available = threading.Condition()
        self._idle: list[SmtpSession] = []  # a stack: the warmest session goes out first
        self._in_use: set[SmtpSession] = set()
        self._opening = 0  # slots reserved by threads that are connecting right now
        self._doomed: set[SmtpSession] = set()  # in use during close_all: close when returned
        self._ssl_context: ssl.SSLContext | None = None
        self._holder = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex[:8]}"
        self._others_waiting = 0  # other holders refused a slot lately (maintain() reads it)

    def __repr__(self) -> str:
        return (
            f"SessionPool(provider={self.config.name!r}, idle={len(self._idle)}, "
            f"in_use={len(self._in_use)}, max={self.config.max_connections})"
        )

    @property
    def open_count(self) -> int:
        """Sessions this pool holds open or is opening, idle or in use."""
        with self._available:
            return len(self._idle) + len(self._in_use) + self._opening

    @property
    def idle_count(self) -> int:
        """Open sessions waiting to be handed out."""
        with self._available:
            return len(self._idle)

    @contextmanager
    def session(self) -> Iterator[SmtpSession]:
        """Lend a ready session for the with-block, then take it back (or discard it if broken)."""
        session = self._acquire()
        try:
            yield session
        finally:
            self._release(session)

    def prewarm(self) -> None:
        """Open a session now if none is idle, and leave it idle for the next send to take.

        A send waiting for its rate slot calls this so that its transaction, when the slot
        comes, does not start with a connection set-up; it holds nothing while it waits.
        """
        if self.idle_count:
            return
        try:
            session = self._acquire()
        except SendError:
            return  # every session busy, or the provider refused: the send itself will say
        self._release(session)

    def close_all(self) -> None:
        """Close the idle sessions now and the lent ones when they come back."""
        with self._available:
            idle, self._idle = self._idle, []
            self._doomed |= self._in_use
            self._available.notify_all()
        for session in idle:
            self._close(session)

    def _acquire(self) -> SmtpSession:
        if os.getpid() != self._pid:
            raise RuntimeError("a SessionPool crossed a fork; use PoolRegistry in each process")
        deadline = self._clock() + self.acquire_timeout_seconds
        while True:
            session = self._take_idle_or_reserve(deadline)
            if session is None:
                return self._open_new()
            try:
                good = self._still_good(session)
            except BaseException:
                # The fleet slot's refresh (Redis) failed, not the session: put it back so the
                # pool's count stays right, and let the caller see the outage. Without this,
                # every Redis blip would shrink the pool for good.
                self._release(session)
                raise
            if good:
                return session
            self._discard(session)

    def _take_idle_or_reserve(self, deadline: float) -> SmtpSession | None:
        """Lend an idle session, or reserve a slot to open one (None); wait while at the cap."""
        with self._available:
            while True:
                if self._idle:
                    session = self._idle.pop()
                    self._in_use.add(session)
                    return session
                if len(self._in_use) + self._opening < self.config.max_connections:
                    self._opening += 1
                    return None
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"{self.config.name}: all {self.config.max_connections} connections "
                        f"stayed busy for {self.acquire_timeout_seconds:g}s"
                    )
                self._available.wait(remaining)

    def _open_new(self) -> SmtpSession:
        """Open a session in the reserved slot (outside the lock: connecting is slow)."""
        token = None
        try:
            token = self._acquire_fleet_slot()
            session = SmtpSession(
                self.config, ssl_context=self._tls_context(), throttle_rules=self._throttle_rules
            )
            session.open()
        except BaseException:
            with self._available:
                self._opening -= 1
                self._available.notify()
            if token is not None:
                self._give_back_slot(token)
            raise
        with self._available:
            self._opening -= 1
            self._in_use.add(session)
            if token is not None:
                self._slot_tokens[session] = (token, self._clock())
        return session

    def _acquire_fleet_slot(self) -> str | None:
        if self._slots is None:
            return None
        deadline = self._clock() + min(FLEET_SLOT_WAIT_SECONDS, self.acquire_timeout_seconds)
        while True:
            token = self._slots.acquire_connection(self.config, self._holder)
            if token is not None:
                return token
            if self._clock() >= deadline:
                raise PoolTimeout(
                    f"{self.config.name}: the fleet-wide cap of {self.config.max_connections} "
                    "connections is reached"
                )
            self._sleep(FLEET_SLOT_POLL_SECONDS)

    def _fleet_slot_alive(self, session: SmtpSession, now: float) -> bool:
        """Refresh the session's fleet slot now and then; False if its lease already lapsed."""
        with self._available:
            held = self._slot_tokens.get(session)
        if held is None or now - held[1] < SLOT_REFRESH_EVERY_SECONDS:
            return True
        if not self._slots.refresh_connection(self.config, held[0]):
            return False
        with self._available:
            self._slot_tokens[session] = (held[0], now)
        return True

    def _close(self, session: SmtpSession) -> None:
        """Close a session and give back its fleet slot."""
        with self._available:
            held = self._slot_tokens.pop(session, None)
        session.close()
        if held is not None:
            self._give_back_slot(held[0])

    def _give_back_slot(self, token: str) -> None:
        """Release a fleet slot; if the store fails, its lease frees the slot on its own.

        Never raises: this runs after a send (a provider's 250 must not turn into an error)
        and while cleaning up, where the pool's own bookkeeping is already settled.
        """
        try:
            self._slots.release_connection(self.config, token)
        except Exception as exc:
            logger.warning(
                "event=slot_release_failed provider=%s error=%s: the lease will expire",
                self.config.name,
                type(exc).__name__,
            )

    def _still_good(self, session: SmtpSession) -> bool:
        """Check an idle session before lending it: not broken, not too old, answers NOOP."""
        now = self._clock()
        if not session.usable or self._too_old(session, now):
            return False
        if not self._fleet_slot_alive(session, now):
            return False
        # Servers drop idle clients (RFC 5321 suggests 5 minutes, some are quicker): after a
        # pause, one NOOP is cheaper than a failed MAIL.
        idle_for = now - (session.last_used or 0.0)
        return idle_for <= self.max_idle_seconds or session.noop_ok()

    def _too_old(self, session: SmtpSession, now: float) -> bool:
        return now - (session.opened_at or now) > self.max_age_seconds

    def _release(self, session: SmtpSession) -> None:
        retire = (
            not session.usable
            or self._too_old(session, self._clock())
            or session.sent_count >= self.max_messages_per_session
        )
        with self._available:
            retire = retire or self._above_share_locked()  # counts this session too
            self._in_use.discard(session)
            if session in self._doomed:
                self._doomed.discard(session)
                retire = True
            if not retire:
                self._idle.append(session)
            self._available.notify()
        if retire:
            self._close(session)

    def maintain(self) -> None:
        """Housekeeping the maintenance thread runs: yield slots to waiters, close stale idle
        sessions, and keep this process's fleet slots leased.

        Never raises for Redis: the fleet state it reads and refreshes heals on its own.
        """
        if self._slots is not None:
            try:
                self._others_waiting = self._slots.connection_demand(self.config, self._holder)
            except Exception:
                self._others_waiting = 0
        now = self._clock()
        stale: list[SmtpSession] = []
        with self._available:
            for session in list(self._idle):  # coldest first
                idle_for = now - (session.last_used or session.opened_at or now)
                if idle_for > self.max_idle_seconds or self._above_share_locked():
                    self._idle.remove(session)
                    stale.append(session)
        for session in stale:
            self._close(session)
        if self._slots is not None:
            self._refresh_slots(now)

    def _above_share_locked(self) -> bool:
        """Whether this pool holds more than its share of the fleet's slots while others wait."""
        if self._slots is None or self._others_waiting <= 0:
            return False
        share = max(1, self.config.max_connections // (self._others_waiting + 1))
        return len(self._idle) + len(self._in_use) + self._opening > share

    def _refresh_slots(self, now: float) -> None:
        with self._available:
            due = [
                (session, token)
                for session, (token, refreshed) in self._slot_tokens.items()
                if now - refreshed >= SLOT_REFRESH_EVERY_SECONDS
            ]
        for session, token in due:
            try:
                alive = self._slots.refresh_connection(self.config, token)
            except Exception:
                return  # Redis is away; the next round tries again before the lease ends
            with self._available:
                if session not in self._slot_tokens:
                    continue  # closed meanwhile
                if alive:
                    self._slot_tokens[session] = (token, now)
                    continue
                # The slot lapsed and may be someone else's now: this session must go.
                if session in self._idle:
                    self._idle.remove(session)
                else:
                    self._doomed.add(session)
                    continue
            self._close(session)

    def _discard(self, session: SmtpSession) -> None:
        with self._available:
            self._in_use.discard(session)
            self._doomed.discard(session)
            self._available.notify()
        self._close(session)

    def _tls_context(self) -> ssl.SSLContext | None:
        # One context per pool: loading the CA bundle for every new connection is wasted work.
        if self.config.tls == TlsMode.NONE:
            return None
        if self._ssl_context is None:
            self._ssl_context = make_tls_context(self.config)
        return self._ssl_context


class PoolRegistry:
    """One SessionPool per provider name, for the current process only."""

    def __init__(
        self, *, maintain_every_seconds: float | None = MAINTAIN_EVERY_SECONDS, **pool_options: Any
    ) -> None:
        self._pool_options = pool_options
        self._maintain_every = maintain_every_seconds
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pools: dict[str, SessionPool] = {}
        self._maintainer: threading.Thread | None = None

    def get(self, config: ProviderConfig) -> SessionPool:
        """Return this process's pool for the provider, creating it on first use."""
        self._forget_if_forked()
        with self._lock:
            pool = self._pools.get(config.name)
            if pool is not None and pool.config == config:
                return pool
            replaced = pool
            pool = self._pools[config.name] = SessionPool(config, **self._pool_options)
            self._start_maintenance()
        if replaced is not None:
            replaced.close_all()  # the provider's settings changed: stop using the old sessions
        return pool

    def close_all(self) -> None:
        """Close every pool's sessions (idle now, lent ones when they come back)."""
        self._forget_if_forked()
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close_all()

    def _start_maintenance(self) -> None:
        # Started in the process that sends (threads do not survive a fork); caller holds _lock.
        if self._maintain_every is None or self._maintainer is not None:
            return
        self._maintainer = threading.Thread(
            target=self._maintain_forever, name="session-pool-maintenance", daemon=True
        )
        self._maintainer.start()

    def _maintain_forever(self) -> None:
        pid = os.getpid()
        while pid == self._pid:
            time.sleep(self._maintain_every or MAINTAIN_EVERY_SECONDS)
            with self._lock:
                pools = list(self._pools.values())
            for pool in pools:
                try:
                    pool.maintain()
                except Exception:
                    logger.exception("event=pool_maintenance_failed provider=%s", pool.config.name)

    def _forget_if_forked(self) -> None:
        if self._pid == os.getpid():
            return
        # Inherited across fork: the parent's sockets are not ours to use or to QUIT, and its lock
        # may have been held by a thread that does not exist here. Start empty.
        logger.debug("pool registry inherited across fork; starting fresh pid=%d", os.getpid())
        self._lock = threading.Lock()
        self._pools = {}
        self._maintainer = None
        self._pid = os.getpid()
