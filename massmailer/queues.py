"""The RabbitMQ topology: the priority send queue, the delay tiers and the maintenance queue."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

from massmailer.delivery.retry import DELAY_TIERS_SECONDS

MAX_PRIORITY = 9
SEND_QUEUE = "emails"
MAINTENANCE_QUEUE = "maintenance"
WEBHOOKS_QUEUE = "webhooks"  # its own processes: a slow receiver never holds up sending

send_exchange = Exchange("massmailer", type="direct", durable=True)
delay_exchange = Exchange("massmailer.delay", type="direct", durable=True)

send_queue = Queue(
    SEND_QUEUE,
    send_exchange,
    routing_key=SEND_QUEUE,
    durable=True,
    queue_arguments={"x-max-priority": MAX_PRIORITY},
)
maintenance_queue = Queue(
    MAINTENANCE_QUEUE, send_exchange, routing_key=MAINTENANCE_QUEUE, durable=True
)
webhooks_queue = Queue(WEBHOOKS_QUEUE, send_exchange, routing_key=WEBHOOKS_QUEUE, durable=True)


def delay_queue_name(seconds: int) -> str:
    """Name the delay tier that holds messages for `seconds`."""
    return f"{SEND_QUEUE}.delay.{seconds}s"


def delay_queue(seconds: int) -> Queue:
    """A consumer-less queue whose messages dead-letter back into the send queue when due."""
    name = delay_queue_name(seconds)
    return Queue(
        name,
        delay_exchange,
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-message-ttl": seconds * 1000,
            "x-dead-letter-exchange": send_exchange.name,
            "x-dead-letter-routing-key": SEND_QUEUE,
        },
    )


DELAY_QUEUES = tuple(delay_queue(s) for s in DELAY_TIERS_SECONDS)
ALL_QUEUES = (send_queue, maintenance_queue, webhooks_queue, *DELAY_QUEUES)


def declare_topology(connection: Connection) -> None:
    """Declare every exchange and queue with identical arguments; safe to repeat."""
    channel = connection.default_channel
    for queue in ALL_QUEUES:
        queue(channel).declare()
