"""Per-process collaborators (pools, limits, delivery, publisher), built after any fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from sqlalchemy.orm import Session

from massmailer import dispatch
from massmailer.config import Settings
from massmailer.delivery.engine import ChunkReport, DeliveryService
from massmailer.delivery.limits.factory import limits_for
from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.providers.pool import PoolRegistry
from massmailer.delivery.sender_threads import SenderThreads
from massmailer.dispatch import Publisher


@dataclass
class Services:
    settings: Settings
    limits: Limits
    pools: PoolRegistry
    delivery: DeliveryService
    publisher: Publisher
    senders: SenderThreads


def deliver_chunk(
    session: Session, services: Services, job_ids: Sequence[int], budget_seconds: float
) -> ChunkReport:
    """Deliver a chunk, then publish its retries to their delay tiers and its released jobs now.

    What a send task does, and what the embedded demo's worker threads do too.
    """
    report = services.delivery.deliver(session, job_ids, budget_seconds=budget_seconds)
    chunk_size = services.settings.chunk_size
    for tier, group in groupby(sorted(report.retries, key=lambda r: r[0]), key=lambda r: r[0]):
        retries = [d for _, d in group]
        dispatch.dispatch(
            session, services.publisher, retries, chunk_size=chunk_size, delay_seconds=tier
        )
    if report.released:
        dispatch.dispatch(session, services.publisher, report.released, chunk_size=chunk_size)
    return report


# A Redis that stops answering must fail a send as an outage, not hang its worker slot.
SENDER_REDIS_TIMEOUT_SECONDS = 5.0

_lock = threading.Lock()
_cache: dict[tuple[int, int], Services] = {}


def services_for(settings: Settings, publisher: Publisher) -> Services:
    """Return this process's services for settings, building them once per process."""
    # Keyed by pid so a child of fork never reuses its parent's sockets.
    key = (os.getpid(), id(settings))
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = build_services(settings, publisher)
        return found


def build_services(
    settings: Settings, publisher: Publisher, limits: Limits | None = None
) -> Services:
    """Wire delivery with Redis limits when REDIS_URL is set, in-process ones otherwise."""
    if limits is None:
        limits = make_limits(settings)
    pools = PoolRegistry(slots=limits, throttle_rules=settings.throttle_rules)
    senders = SenderThreads(settings.sender_threads, settings.sender_threads_min)
    delivery = DeliveryService(settings, settings.providers, pools, limits, senders=senders)
    return Services(settings, limits, pools, delivery, publisher, senders)


def make_limits(settings: Settings) -> Limits:
    """Limits shared by the fleet through Redis, or in-process for the embedded demo."""
    return limits_for(settings, timeout_seconds=SENDER_REDIS_TIMEOUT_SECONDS)


def forget_all() -> None:
    """Close and forget the services this process built (tests build apps with other settings)."""
    with _lock:
        for (pid, _), services in _cache.items():
            if pid == os.getpid():
                services.senders.shutdown()
                services.pools.close_all()
        _cache.clear()
