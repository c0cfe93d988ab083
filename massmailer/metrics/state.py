"""Read the system's shared state at scrape time: every figure comes from the store that owns it.

Counts come from PostgreSQL, queue depths from RabbitMQ (a passive declare), provider health from
the limits store (Redis). Each source is read on its own, so one that is down costs only its own
figures; the error is named instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from amqp.exceptions import ChannelError
from kombu import Connection
from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.config import Settings
from massmailer.limits.factory import limits_for
from massmailer.limits.interface import Limits
from massmailer.providers.base import ProviderConfig
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


def read_state(session: Session, settings: Settings, limits: Limits) -> OpsState:
    """Read job counts, queue depths and provider health, each independently."""
    state = OpsState()
    state.jobs = _read(state, "postgresql", lambda: read_jobs(session))
    if settings.broker_url:
        state.queues = _read(state, "rabbitmq", lambda: read_queues(settings.broker_url))
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
        return jobstore.count_by_status(session)
    finally:
        session.rollback()  # end the read transaction: no connection stays idle in it


def read_queues(broker_url: str) -> list[QueueDepth]:
    """Messages and consumers of every queue of the topology (passive declare: creates nothing)."""
    depths = []
    with Connection(broker_url, connect_timeout=TIMEOUT_SECONDS) as connection:
        connection.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)
        channel = connection.channel()
        for queue in ALL_QUEUES:
            try:
                _, messages, consumers = channel.queue_declare(queue.name, passive=True)
            except ChannelError:
                # Not declared yet (no worker or API has started): the broker closed the channel.
                channel = connection.channel()
                continue
            depths.append(QueueDepth(queue.name, messages, consumers))
    return depths


def read_providers(providers: Iterable[ProviderConfig], limits: Limits) -> dict[str, dict]:
    """Each provider's breaker, rate headroom and sessions, with its configured limits."""
    providers = list(providers)
    snapshot = limits.snapshot(providers)
    for provider in providers:
        snapshot[provider.name]["rate_per_second"] = provider.rate_per_second
        snapshot[provider.name]["rate_per_day"] = provider.rate_per_day
        snapshot[provider.name]["weight"] = provider.weight
    return snapshot
