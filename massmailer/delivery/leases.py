"""Keep a process's claims alive while their chunks make progress, on a thread of its own.

A claim's lease is short (MASSMAILER_LEASE_SECONDS), so a crashed process's jobs move again within
about a minute. The keeper renews every held token in one statement every `renew_every` seconds,
over its own database connection (never the slots' sessions, so a busy or broken slot cannot
stall renewal). A chunk that makes no progress for `stall_after` seconds is not renewed: a wedged
chunk's lease lapses and the sweeper takes its jobs.

`Lease.remaining()` is what the engine checks before starting a send. It is counted on this
process's monotonic clock from just before the claim or the last successful renewal was sent, so
it never exceeds what the database granted (lease_until is the database's clock at the statement
plus the lease). When the database cannot be reached, nothing is renewed and it runs down to zero,
and the engine stops starting sends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy
from sqlalchemy.pool import NullPool

from massmailer import jobstore

logger = logging.getLogger(__name__)


class Lease:
    """One chunk's claim, held under its token while the keeper renews it."""

    def __init__(self, token: str, claimed_at: float, lease_seconds: float, monotonic) -> None:
        self.token = token
        self._monotonic = monotonic
        self._expires = claimed_at + lease_seconds
        self._last_progress = monotonic()
        self._released = False
        self._lost = False

    def progress(self) -> None:
        """Note that the chunk made progress (a send finished): keep renewing."""
        self._last_progress = self._monotonic()

    def remaining(self) -> float:
        """Seconds of lease left for certain (0 once released or lost)."""
        if self._released or self._lost:
            return 0.0
        return max(0.0, self._expires - self._monotonic())

    def release(self) -> None:
        """Stop renewing this token (the chunk is finished)."""
        self._released = True

    def _renewed(self, sent_at: float, lease_seconds: float) -> None:
        self._expires = max(self._expires, sent_at + lease_seconds)

    def _stalled(self, now: float, stall_after: float) -> bool:
        return now - self._last_progress > stall_after


class LeaseKeeper:
    """One per process: renews the leases of its chunks on its own thread and connection."""

    def __init__(
        self,
        engine: sqlalchemy.Engine,
        lease_seconds: float,
        *,
        renew_every: float | None = None,
        stall_after: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = engine.url
        self._lease_seconds = lease_seconds
        # A fifth of the lease: a lease never drops below 4/5 of its length while renewal works.
        self._renew_every = renew_every if renew_every is not None else lease_seconds / 5
        self._stall_after = stall_after if stall_after is not None else lease_seconds
        self._monotonic = monotonic
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: sqlalchemy.Engine | None = None
        self._conn: sqlalchemy.Connection | None = None

    def hold(self, token: str, claimed_at: float) -> Lease:
        """Start keeping token's claim; claimed_at: monotonic time read just before the claim."""
        lease = Lease(token, claimed_at, self._lease_seconds, self._monotonic)
        with self._lock:
            self._leases[token] = lease
            if self._thread is None:
                # Started on first use, so no thread or connection exists before a fork.
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
        return lease

    def close(self) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._disconnect()
        if self._engine is not None:
            self._engine.dispose()

    def renew_now(self) -> None:
        """Renew every lease whose chunk progressed recently, in one statement (one round)."""
        now = self._monotonic()
        with self._lock:
            for token in [t for t, lease in self._leases.items() if lease._released]:
                del self._leases[token]
            live = [
                lease
                for lease in self._leases.values()
                if not lease._stalled(now, self._stall_after)
            ]
        if not live:
            self._disconnect()  # nothing held: hold no connection either
            return
        sent_at = self._monotonic()
        held = jobstore.renew(
            self._connection(), [lease.token for lease in live], self._lease_seconds
        )
        for lease in live:
            if lease.token in held:
                lease._renewed(sent_at, self._lease_seconds)
            else:
                # The sweeper or a flush ended the claim of every job left under this token.
                lease._lost = True

    def _run(self) -> None:
        while not self._stop.wait(self._renew_every):
            try:
                self.renew_now()
            except sqlalchemy.exc.SQLAlchemyError as exc:
                # The leases run down meanwhile; the engine stops starting sends on its own.
                logger.warning("event=lease_renew_failed error=%s", type(exc).__name__)
                self._disconnect()
            except Exception:
                # Never let the keeper die quietly: log, and try again next round.
                logger.exception("event=lease_keeper_error")
                self._disconnect()

    def _connection(self) -> sqlalchemy.Connection:
        if self._conn is None:
            if self._engine is None:
                # Its own engine without a pool: renewal never waits for a slot's connection.
                self._engine = sqlalchemy.create_engine(
                    self._url, poolclass=NullPool, connect_args=self._connect_args()
                )
            self._conn = self._engine.connect()
        return self._conn

    def _connect_args(self) -> dict:
        if self._url.get_backend_name() != "postgresql":
            return {}
        # A renewal that hangs (a network cut, a lock) must fail in time for the next round.
        wait = max(1, round(self._renew_every))
        return {"connect_timeout": wait, "options": f"-c statement_timeout={wait * 1000}"}

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a connection that broke cannot be closed cleanly; drop it
                logger.debug("event=lease_connection_close_failed", exc_info=True)
            self._conn = None
