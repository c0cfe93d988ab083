"""Accept an email: store the job (the caller commits), then hand it to the queue."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from massmailer import dispatch
from massmailer.config import Settings
from massmailer.delivery.message import make_message_id
from massmailer.jobstore import Dispatch
from massmailer.models import EmailJob, Status
from massmailer.models.types import utcnow
from massmailer.validation import EmailRequest

logger = logging.getLogger(__name__)


def store(
    session: Session, request: EmailRequest, *, api_key_id: int | None, settings: Settings
) -> EmailJob:
    """Add the job to the session's transaction and flush it for its id; the caller commits."""
    now = utcnow()
    job = EmailJob(
        recipient=request.to_addr,
        recipient_name=request.to_name,
        sender=request.from_addr,
        sender_name=request.from_name,
        subject=request.subject,
        body=request.text or "",
        html=request.html,
        headers=[list(h) for h in request.headers] or None,
        priority=request.priority,
        category=request.category,
        send_at=request.send_at,
        status=Status.PENDING,
        attempts=0,
        message_id=make_message_id(settings.message_id_domain),
        api_key_id=api_key_id,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    return job


def publish(session: Session, publisher: dispatch.Publisher, job: EmailJob) -> None:
    """Publish a committed job unless it is scheduled later (the sweeper releases it then)."""
    if job.send_at is None or job.send_at <= utcnow():
        dispatch.dispatch(session, publisher, [Dispatch(job.job_id, job.priority, 0)], chunk_size=1)


def after_commit(session: Session, step: str, run: Callable[[], object]) -> None:
    """Run what follows a committed request (publish, stamp, statistics); never raise.

    The jobs are committed, so the answer must be 202 whatever fails here: a 5xx would tell the
    client nothing was created, and a retry without an Idempotency-Key would create it all again.
    A job left unpublished or unstamped is re-published by the sweeper after the grace period.
    """
    try:
        run()
    except Exception:  # logged here, once; the committed jobs are the sweeper's to recover
        logger.exception("event=after_commit_failed step=%s", step)
        with contextlib.suppress(Exception):
            session.rollback()
