"""Publish send chunks to RabbitMQ through Celery, confirmed and mandatory."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

import amqp
from amqp.exceptions import AMQPError
from celery import Celery
from kombu import Connection
from kombu.exceptions import KombuError
from kombu.serialization import dumps

from massmailer.dispatch import PublishError
from massmailer.queues import (
    SEND_QUEUE,
    declare_topology,
    delay_exchange,
    delay_queue_name,
    send_exchange,
)

SEND_TASK = "massmailer.send_chunk"
PERSISTENT = 2  # AMQP delivery mode: the broker writes the message to disk before its confirm
# How long publish_many waits for the confirms of what it sent; a chunk unconfirmed by then
# counts as not held, and the sweeper publishes it again.
CONFIRM_TIMEOUT_SECONDS = 10.0


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
        try:
            self.ensure_topology()
            # mandatory: an unroutable message comes back as basic.return, which py-amqp raises
            # before the confirm, so it counts as a failed publish instead of vanishing.
            self._celery.send_task(
                SEND_TASK, args=(job_ids,), priority=priority, mandatory=True,
                **_route(delay_seconds),
            )  # fmt: skip
        except (AMQPError, KombuError, OSError) as exc:
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc

    def publish_many(
        self, chunks: Sequence[tuple[list[int], int]], delay_seconds: int = 0
    ) -> list[bool]:
        """Queue (job_ids, priority) chunks, their confirms awaited together; return which the
        broker holds.

        publish() awaits each confirm in turn, a round trip to the broker per chunk (50 for a
        batch of 10,000). Here the chunks go out back to back on a channel of their own, in
        confirm mode, and the confirms are read as they come (RabbitMQ acknowledges several at
        once). A chunk returned as unroutable, refused (nack), or not confirmed when the
        connection fails or CONFIRM_TIMEOUT_SECONDS pass counts as not held: its jobs wait for
        the sweeper, whose claim keeps a second copy from sending anything twice.
        """
        confirms = _Confirms(len(chunks))
        try:
            self.ensure_topology()
            with self._celery.pool.acquire(block=True) as connection:
                try:
                    self._publish_confirmed(connection, chunks, delay_seconds, confirms)
                except (AMQPError, KombuError, OSError):
                    connection.collect()  # the pool connects it again on its next use
        except (AMQPError, KombuError, OSError):
            pass  # what was confirmed before the failure stays held
        return [confirms.held(tag) for tag in range(1, len(chunks) + 1)]

    def _publish_confirmed(
        self, connection: Connection, chunks: Sequence[tuple[list[int], int]],
        delay_seconds: int, confirms: _Confirms,
    ) -> None:  # fmt: skip
        channel = connection.channel()
        try:
            channel.events["basic_ack"].add(confirms.ack)
            channel.events["basic_nack"].add(confirms.nack)
            channel.events["basic_return"].add(confirms.returned)
            channel.confirm_select()  # a new channel: its delivery tags count from 1
            route = _route(delay_seconds)
            for tag, (job_ids, priority) in enumerate(chunks, start=1):
                task_id = str(uuid.uuid4())
                confirms.task_ids[task_id] = tag
                message = self._celery.amqp.as_task_v2(task_id, SEND_TASK, args=(job_ids,))
                content_type, encoding, body = dumps(message.body, serializer="json")
                properties = {**message.properties, "delivery_mode": PERSISTENT}
                # The class's basic_publish, not the instance's: on a connection set to
                # confirm_publish the instance's awaits each confirm, which is what this avoids.
                amqp.Channel.basic_publish(
                    channel,
                    channel.prepare_message(
                        body, priority, content_type, encoding, message.headers, properties
                    ),
                    mandatory=True,
                    **route,
                )
            deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
            while confirms.pending() and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=deadline - time.monotonic())
                except TimeoutError:
                    break
        finally:
            channel.close()


class _Confirms:
    """What the broker answered for each delivery tag (1..count) of one confirm-mode channel."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._answered_through = 0  # every tag up to this one has its answer
        self._answered: set[int] = set()
        self._refused: set[int] = set()
        self.task_ids: dict[str, int] = {}  # a message's task id (its correlation id) -> its tag

    def ack(self, tag: int, multiple: bool) -> None:
        self._answer(tag, multiple, refused=False)

    def nack(self, tag: int, multiple: bool) -> None:
        self._answer(tag, multiple, refused=True)

    def returned(self, exc: Exception, exchange: str, routing_key: str, message) -> None:
        # An unroutable message comes back before its ack, and the ack still follows.
        tag = self.task_ids.get(message.properties.get("correlation_id"))
        if tag is not None:
            self._refused.add(tag)

    def pending(self) -> bool:
        return self._answered_through < self._count

    def held(self, tag: int) -> bool:
        return tag in self._answered and tag not in self._refused

    def _answer(self, tag: int, multiple: bool, *, refused: bool) -> None:
        # `multiple` answers every tag up to this one that had no answer yet.
        tags = range(self._answered_through + 1, tag + 1) if multiple else (tag,)
        for answered in tags:
            if answered not in self._answered:
                self._answered.add(answered)
                if refused:
                    self._refused.add(answered)
        while self._answered_through + 1 in self._answered:
            self._answered_through += 1


def _route(delay_seconds: int) -> dict[str, str]:
    if delay_seconds:
        return {"exchange": delay_exchange.name, "routing_key": delay_queue_name(delay_seconds)}
    return {"exchange": send_exchange.name, "routing_key": SEND_QUEUE}
