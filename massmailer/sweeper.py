"""Recover what the broker cannot be holding, one sweeper at a time."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from massmailer import batches, dispatch, jobstore
from massmailer.bounces import inbox
from massmailer.models.types import utcnow
from massmailer.services import Services

logger = logging.getLogger(__name__)

# An arbitrary, fixed advisory-lock key: "mm sweep".
SWEEP_LOCK_KEY = 0x6D6D_7377_6565_70
BATCH = 5000


def sweep(session: Session, services: Services) -> int:
    """Dispatch lost, expired and due-scheduled jobs; return how many were published."""
    engine = session.get_bind()
    if engine.dialect.name != "postgresql":
        return _sweep_batches(session, services)
    with engine.connect() as lock_conn:
        # A session-level advisory lock on its own connection: held across the batches' commits.
        got = lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SWEEP_LOCK_KEY})
        if not got.scalar():
            logger.info("event=sweep_skipped reason=another_sweeper_running")
            return 0
        try:
            published = _sweep_batches(session, services)
            # Off the request path: intake no longer runs ANALYZE after a large batch.
            batches.refresh_if_stale(session)
            return published
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SWEEP_LOCK_KEY})
            lock_conn.commit()


def _sweep_batches(session: Session, services: Services) -> int:
    settings = services.settings
    grace = timedelta(seconds=settings.publish_grace_seconds)
    jobstore.housekeep(
        session,
        utcnow(),
        timedelta(seconds=settings.max_age_seconds),
        event_retention=timedelta(days=settings.event_retention_days),
    )
    _inbound_reports(session, settings)
    unmarked = jobstore.unmark_lapsed(session, grace)
    if unmarked:
        logger.warning("event=batch_publish_unconfirmed batches=%d", unmarked)
    published = 0
    while True:
        lost = jobstore.take_lost(session, grace, BATCH)
        if lost:
            published += dispatch.dispatch(
                session, services.publisher, lost, chunk_size=settings.chunk_size
            )
            logger.info("event=swept jobs=%d", len(lost))
        if len(lost) < BATCH:
            return published


def _inbound_reports(session: Session, settings) -> None:
    """Apply reports that arrived while their jobs were claimed; drop raw reports past retention."""
    now = utcnow()
    applied = inbox.apply_pending(session, now)
    if applied:
        logger.info("event=inbound_reports_applied reports=%d", applied)
    inbox.prune(session, now, timedelta(days=settings.inbound_retention_days))
