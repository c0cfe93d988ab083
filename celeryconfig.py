"""Celery settings only, each with its reason. The broker URL comes from massmailer.config."""

from kombu import Queue

from massmailer.queues import (
    MAINTENANCE_QUEUE,
    SEND_QUEUE,
    WEBHOOKS_QUEUE,
    maintenance_queue,
    send_queue,
    webhooks_queue,
)

# Only ids and JSON-safe values cross the broker; pickle would let a message run code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# Outcomes live in PostgreSQL, so Celery keeps no results.
task_ignore_result = True
result_backend = None

# A message is acked only after its chunk's outcomes are committed; a worker that dies mid-chunk
# leaves it to be redelivered, and the claim in PostgreSQL keeps the redelivery from double-sending.
task_acks_late = True
task_reject_on_worker_lost = True

# Prefetch 1: a slot holds one chunk, so a high-priority message published later is the next one
# any free slot takes (with a larger prefetch the worker buffers low-priority work ahead of it).
worker_prefetch_multiplier = 1

# Publisher confirms: apply_async returns only once the broker has the message.
broker_transport_options = {"confirm_publish": True}
# A publish that cannot reach the broker fails fast; the row is committed and the sweeper retries.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
broker_connection_retry_on_startup = True

# The hard limit ends a hung slot; the soft one lets a chunk record what it did. Both are set from
# MASSMAILER_TASK_TIME_LIMIT_SECONDS (massmailer.worker). They are a last resort: the claim's short
# lease is renewed while the chunk progresses, and a chunk stops starting sends when too little
# lease remains (massmailer.delivery.leases), so no second worker can take a job still being sent.
task_soft_time_limit = 300
task_time_limit = 360

# Explicit queues and routes; the delay tiers have no consumers and are declared at start-up.
task_queues = (send_queue, maintenance_queue, webhooks_queue)
task_default_queue = SEND_QUEUE
task_routes = {
    "massmailer.send_chunk": {"queue": SEND_QUEUE},
    "massmailer.sweep": {"queue": MAINTENANCE_QUEUE},
    # Webhooks have a queue and processes of their own: a receiver taking 15 s per request
    # occupies webhook slots, never send slots.
    "massmailer.webhooks_dispatch": {"queue": WEBHOOKS_QUEUE},
    "massmailer.deliver_webhook": {"queue": WEBHOOKS_QUEUE},
}
task_create_missing_queues = False

# The send queue carries its own x-max-priority (massmailer.queues); task_queue_max_priority
# would stamp it on every queue Celery declares, the maintenance queue included.
task_default_priority = 0

# Flower and the dashboard see tasks through events.
worker_send_task_events = True
task_send_sent_event = False

# Sweep the lost and the due-scheduled jobs on the maintenance queue, away from the backlog.
beat_schedule = {
    "sweep": {
        "task": "massmailer.sweep",
        "schedule": 30.0,
        "options": {"queue": MAINTENANCE_QUEUE},
    },
    # Claim due webhook messages (new ones and retries whose next_attempt_at has come).
    "webhooks": {
        "task": "massmailer.webhooks_dispatch",
        "schedule": 5.0,
        "options": {"queue": WEBHOOKS_QUEUE},
    },
}

worker_hijack_root_logger = False

__all__ = ["Queue"]
