"""Thin Celery tasks: decode ids, call the delivery service or the sweeper, publish what follows."""

from __future__ import annotations

import logging
import time

from celery import current_app, shared_task
from celery.exceptions import Reject
from flask import current_app as flask_app

from massmailer import sweeper
from massmailer.extensions import db
from massmailer.outages import OUTAGE_ERRORS
from massmailer.publisher import CeleryPublisher
from massmailer.services import Services, deliver_chunk, services_for
from massmailer.webhooks import store as webhooks

logger = logging.getLogger(__name__)

OUTAGE_PAUSE_SECONDS = 2.0


def current_services() -> Services:
    """This process's services for the running app."""
    return services_for(flask_app.extensions["massmailer.settings"], CeleryPublisher(current_app))


@shared_task(name="massmailer.send_chunk", bind=True)
def send_chunk(self, job_ids: list[int]) -> dict:
    """Deliver a chunk of job ids, then publish its retries to their delay tiers."""
    if not isinstance(job_ids, list) or not all(type(i) is int for i in job_ids):
        # task_id is added to every line by massmailer.logs (set on task_prerun).
        logger.error("event=bad_task_args args=%r", job_ids)
        return {"error": "job_ids must be a list of integers"}
    services = current_services()
    try:
        report = deliver_chunk(db.session, services, job_ids, services.settings.send_budget_seconds)
    except OUTAGE_ERRORS as exc:
        # PostgreSQL or Redis is down. Acking would strand jobs nobody claimed (they carry an
        # enqueued stamp, so the sweeper leaves them alone): put the message back instead, after
        # a pause so an outage does not become a hot loop.
        logger.warning("event=chunk_requeued reason=outage error=%s", type(exc).__name__)
        time.sleep(OUTAGE_PAUSE_SECONDS)
        raise Reject(exc, requeue=True) from exc
    logger.info(
        "event=chunk_done jobs=%d claimed=%d sent=%d failed=%d retries=%d",
        len(job_ids),
        report.claimed,
        report.sent,
        report.failed,
        len(report.retries),
    )
    return {
        "claimed": report.claimed,
        "sent": report.sent,
        "failed": report.failed,
        "retries": len(report.retries),
        "released": len(report.released),
    }


@shared_task(name="massmailer.sweep")
def sweep() -> int:
    """Re-publish PENDING jobs the broker cannot be holding; release due scheduled jobs."""
    return sweeper.sweep(db.session, current_services())


@shared_task(name="massmailer.webhooks_dispatch")
def webhooks_dispatch() -> int:
    """Announce completed batches, claim due webhook messages and publish one try for each."""
    webhooks.enqueue_completed_batches(db.session)
    settings = flask_app.extensions["massmailer.settings"]
    token, ids = webhooks.claim_due(db.session, settings.webhook_max_in_flight)
    for outbox_id in ids:
        deliver_webhook.delay(outbox_id, token)
    return len(ids)


@shared_task(name="massmailer.deliver_webhook")
def deliver_webhook(outbox_id: int, token: str) -> int:
    """Try a claimed webhook message and, while its endpoint answers 2xx, its next ones.

    Retries wait in PostgreSQL. Return how many messages were tried.
    """
    if type(outbox_id) is not int or not isinstance(token, str):
        logger.error("event=bad_task_args args=%r", (outbox_id, token))
        return 0
    settings = flask_app.extensions["massmailer.settings"]
    turn = webhooks.deliver_in_turn(
        db.session,
        outbox_id,
        token,
        allow_private=settings.webhook_allow_private,
        max_in_flight=settings.webhook_max_in_flight,
    )
    if turn.handed_on is not None:
        # If this publish fails, the claim's lease lapses and the next tick takes the message.
        deliver_webhook.delay(turn.handed_on, token)
    return sum(outcome is not None for outcome in turn.outcomes)
