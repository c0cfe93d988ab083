"""Per-process pools of SMTP sessions, one per provider, reused across messages.

Build pools lazily in the process that sends (after Celery's or gunicorn's fork), never at import:
a socket shared by two processes interleaves their SMTP conversations.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from massmailer.providers.base import FailureKind, ProviderConfig, SendError, TlsMode
from massmailer.providers.smtp import SmtpSession, make_tls_context

logger = logging.getLogger(__name__)


class PoolTimeout(SendError):
    """No session came free in time: every connection this process may open is busy.

    A TRANSIENT SendError so that callers that only know SendError retry; a caller that
    tells "no capacity now" apart from a failed try can catch this one and not charge an attempt.
    """

    def __init__(self, message: str) -> None:
        super().__init__(FailureKind.TRANSIENT, message)


class ConnectionSlots(Protocol):
    """A provider's connection cap across the fleet (massmailer.limits implements it)."""

    def acquire_connection(self, provider: ProviderConfig) -> str | None: ...

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool: ...

    def release_connection(self, provider: ProviderConfig, token: str) -> None: ...


# How long to keep asking for a fleet-wide slot before giving the job back as "no capacity now".
FLEET_SLOT_WAIT_SECONDS = 2.0
FLEET_SLOT_POLL_SECONDS = 0.05
# Slot leases are refreshed when a session is lent, at most this often.
SLOT_REFRESH_EVERY_SECONDS = 10.0


class SessionPool:
    """Thread-safe pool of open SmtpSessions to one provider, for this process only.

    With `slots`, every open session also holds a fleet-wide slot, so max_connections caps the
    provider's connections across all processes and hosts, not per process.
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
    ) -> None:
        self.config = config
        self._slots = slots
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
            if self._still_good(session):
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
            session = SmtpSession(self.config, ssl_context=self._tls_context())
            session.open()
        except BaseException:
            if token is not None:
                self._slots.release_connection(self.config, token)
            with self._available:
                self._opening -= 1
                self._available.notify()
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
            token = self._slots.acquire_connection(self.config)
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
            self._slots.release_connection(self.config, held[0])

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
            self._in_use.discard(session)
            if session in self._doomed:
                self._doomed.discard(session)
                retire = True
            if not retire:
                self._idle.append(session)
            self._available.notify()
        if retire:
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

    def __init__(self, **pool_options: Any) -> None:
        self._pool_options = pool_options
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pools: dict[str, SessionPool] = {}

    def get(self, config: ProviderConfig) -> SessionPool:
        """Return this process's pool for the provider, creating it on first use."""
        self._forget_if_forked()
        with self._lock:
            pool = self._pools.get(config.name)
            if pool is not None and pool.config == config:
                return pool
            replaced = pool
            pool = self._pools[config.name] = SessionPool(config, **self._pool_options)
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

    def _forget_if_forked(self) -> None:
        if self._pid == os.getpid():
            return
        # Inherited across fork: the parent's sockets are not ours to use or to QUIT, and its lock
        # may have been held by a thread that does not exist here. Start empty.
        logger.debug("pool registry inherited across fork; starting fresh pid=%d", os.getpid())
        self._lock = threading.Lock()
        self._pools = {}
        self._pid = os.getpid()
