"""Chunks published together, their confirms awaited together, against the real RabbitMQ."""

from __future__ import annotations

import json

import pytest
from kombu import Connection

from massmailer.publisher import SEND_TASK, CeleryPublisher, _Confirms
from massmailer.queues import SEND_QUEUE
from tests import infra

pytestmark = pytest.mark.integration


def take_all(broker_url: str, queue: str) -> list:
    """Every message in the queue, taken off it."""
    taken = []
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(message)
    return taken


def test_chunks_published_together_are_held_each_as_one_send_task(app, broker_url):
    publisher: CeleryPublisher = app.extensions["massmailer.publisher"]
    chunks = [([1, 2, 3], 0), ([4, 5], 9), ([6], 4)]

    held = publisher.publish_many(chunks)

    assert held == [True, True, True]
    messages = take_all(broker_url, SEND_QUEUE)
    # The queue hands out the highest priority first; each message is the task a worker runs.
    assert [m.properties["priority"] for m in messages] == [9, 4, 0]
    assert all(m.properties["delivery_mode"] == 2 for m in messages), "persistent"
    assert all(m.headers["task"] == SEND_TASK for m in messages)
    args = [json.loads(m.body)[0] for m in messages]
    assert args == [[[4, 5]], [[6]], [[1, 2, 3]]]
    assert len({m.properties["correlation_id"] for m in messages}) == 3


def test_chunks_the_broker_cannot_route_are_not_held(app, broker_url):
    publisher: CeleryPublisher = app.extensions["massmailer.publisher"]
    publisher.ensure_topology()
    with Connection(broker_url) as conn:
        conn.default_channel.queue_delete(SEND_QUEUE)
    try:
        held = publisher.publish_many([([1], 0), ([2], 0)])
    finally:
        publisher._declared = False
        publisher.ensure_topology()  # the other tests need the queue back

    assert held == [False, False]
    assert infra.queue_depth(broker_url, SEND_QUEUE) == 0


def test_an_unreachable_broker_holds_nothing_and_raises_nothing(app):
    from celery import Celery

    down = Celery(broker="amqp://guest:guest@127.0.0.1:1//")
    down.conf.broker_connection_timeout = 1
    down.conf.broker_connection_max_retries = 0

    assert CeleryPublisher(down).publish_many([([1], 0), ([2], 0)]) == [False, False]


# --- the confirms' bookkeeping (pure) ------------------------------------------------------


def test_a_multiple_ack_answers_every_tag_up_to_it():
    confirms = _Confirms(4)
    confirms.ack(3, multiple=True)

    assert [confirms.held(tag) for tag in (1, 2, 3, 4)] == [True, True, True, False]
    assert confirms.pending()
    confirms.ack(4, multiple=False)
    assert not confirms.pending()


def test_a_nack_refuses_only_what_it_answers():
    confirms = _Confirms(4)
    confirms.ack(2, multiple=False)
    confirms.nack(3, multiple=True)  # answers 1 and 3; 2 had its ack already
    confirms.ack(4, multiple=False)

    assert [confirms.held(tag) for tag in (1, 2, 3, 4)] == [False, True, False, True]
    assert not confirms.pending()


def test_a_returned_message_is_not_held_though_its_ack_follows():
    class Returned:
        properties = {"correlation_id": "task-2"}

    confirms = _Confirms(2)
    confirms.task_ids.update({"task-1": 1, "task-2": 2})
    confirms.returned(Exception("NO_ROUTE"), "massmailer", "emails", Returned())
    confirms.ack(2, multiple=True)

    assert [confirms.held(1), confirms.held(2)] == [True, False]
