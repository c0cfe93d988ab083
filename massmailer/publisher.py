"""Publish send chunks to RabbitMQ through Celery, confirmed and mandatory."""

from __future__ import annotations

import threading

from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import KombuError

from massmailer.dispatch import PublishError
from massmailer.queues import (
    SEND_QUEUE,
    declare_topology,
    delay_exchange,
    delay_queue_name,
    send_exchange,
)

SEND_TASK = "massmailer.send_chunk"


class CeleryPublisher:
    """Publish send_chunk tasks, confirmed by the broker and routed to a queue, or fail."""

    def __init__(self, celery_app: Celery) -> None:
        self._celery = celery_app
        self._declared = False
        self._lock = threading.Lock()

    def ensure_topology(self) -> None:
        """Declare every queue once per process before the first publish (after any fork)."""
        if self._declared:
            return
        with self._lock:
            if not self._declared:
                with self._celery.connection_for_write() as connection:
                    declare_topology(connection)
                self._declared = True

    def publish(self, job_ids: list[int], priority: int, delay_seconds: int = 0) -> None:
        """Queue a chunk now or in the delay_seconds tier; raise PublishError if not held."""
        if delay_seconds:
            route = {
                "exchange": delay_exchange.name,
                "routing_key": delay_queue_name(delay_seconds),
            }
        else:
            route = {"exchange": send_exchange.name, "routing_key": SEND_QUEUE}
        try:
            self.ensure_topology()
            # mandatory: an unroutable message comes back as basic.return, which py-amqp raises
            # before the confirm, so it counts as a failed publish instead of vanishing.
            self._celery.send_task(
                SEND_TASK, args=(job_ids,), priority=priority, mandatory=True, **route
            )
        except (AMQPError, KombuError, OSError) as exc:
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
