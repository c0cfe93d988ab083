"""Read the system's shared state at scrape time: every figure comes from the store that owns it.

Counts come from PostgreSQL (job_counts, kept by triggers: metrics/counts.py), queue depths from
RabbitMQ (a passive declare), provider health from the limits store (Redis). Each source is read
on its own, so one that is down costs only its own figures; the error is named instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from amqp.exceptions import AMQPError, ChannelError
from kombu import Connection
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from massmailer.config import Settings
from massmailer.delivery.limits.factory import limits_for
from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.metrics.counts import job_counts
from massmailer.queues import ALL_QUEUES

# A scrape or a dashboard refresh must answer even when a dependency hangs.
TIMEOUT_SECONDS = 3.0

T = TypeVar("T")


@dataclass(frozen=True)
class QueueDepth:
    name: str
    messages: int
    consumers: int


@dataclass
class OpsState:
    """What the system holds now; a part is None when its source could not be read."""

    jobs: dict[str, int] | None = None
    queues: list[QueueDepth] | None = None
    providers: dict[str, dict] | None = None
    errors: dict[str, str] = field(default_factory=dict)


def make_limits(settings: Settings) -> Limits:
    """Limits to read provider health from: the senders' store, with short timeouts."""
    return limits_for(settings, timeout_seconds=TIMEOUT_SECONDS)


def read_state(
    session: Session, settings: Settings, limits: Limits, queues: QueueReader | None = None
) -> OpsState:
    """Read job counts, queue depths and provider health, each independently."""
    state = OpsState()
    state.jobs = _read(state, "postgresql", lambda: read_jobs(session))
    if settings.broker_url:
        url = settings.broker_url
        read = queues.read if queues is not None else lambda: read_queues(url)
        state.queues = _read(state, "rabbitmq", read)
    state.providers = _read(state, "redis", lambda: read_providers(settings.providers, limits))
    return state


def _read(state: OpsState, source: str, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except Exception as exc:  # a source that is down costs its own figures, not the answer
        state.errors[source] = type(exc).__name__
        return None


def read_jobs(session: Session) -> dict[str, int]:
    """Jobs per status from PostgreSQL."""
    try:
        return job_counts(session)
    finally:
        session.rollback()  # end the read transaction: no connection stays idle in it


class QueueReader:
    """Queue depths over one broker connection kept open across scrapes (build it per process).

    Opening an AMQP connection per scrape cost most of a scrape's 50 ms budget on a busy
    machine; passive declares on an open channel take about a millisecond each.
    """

    def __init__(self, broker_url: str) -> None:
        self._url = broker_url
        self._connection: Connection | None = None
        self._channel = None
        self._lock = threading.Lock()

    def read(self) -> list[QueueDepth]:
        """Messages and consumers of every queue; one retry on a fresh connection."""
        with self._lock:
            try:
                return self._depths()
            except (AMQPError, KombuError, OSError):
                self.close()  # a connection the broker dropped since the last scrape
            try:
                return self._depths()
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        """Drop the connection; the next read opens a new one."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                connection.close()

    def _depths(self) -> list[QueueDepth]:
        if self._connection is None:
            connection = Connection(self._url, connect_timeout=TIMEOUT_SECONDS)
            connection.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)
            self._connection, self._channel = connection, connection.channel()
        depths = []
        for queue in ALL_QUEUES:
            try:
                _, messages, consumers = self._channel.queue_declare(queue.name, passive=True)
            except ChannelError:
                # Not declared yet (no worker or API has started): the broker closed the channel.
                self._channel = self._connection.channel()
                continue
            depths.append(QueueDepth(queue.name, messages, consumers))
        return depths


def read_queues(broker_url: str) -> list[QueueDepth]:
    """Messages and consumers of every queue of the topology (passive declare: creates nothing)."""
    reader = QueueReader(broker_url)
    try:
        return reader.read()
    finally:
        reader.close()


def read_providers(providers: Iterable[ProviderConfig], limits: Limits) -> dict[str, dict]:
    """Each provider's breaker, rate headroom and sessions, with its configured limits."""
    providers = list(providers)
    snapshot = limits.snapshot(providers)
    for provider in providers:
        snapshot[provider.name]["rate_per_second"] = provider.rate_per_second
        snapshot[provider.name]["rate_per_day"] = provider.rate_per_day
        snapshot[provider.name]["weight"] = provider.weight
    return snapshot
