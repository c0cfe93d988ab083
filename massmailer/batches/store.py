"""Store a screened batch (its jobs by COPY), publish it after the commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from massmailer import dispatch
from massmailer.batches.copy import copy_jobs
from massmailer.batches.intake import BatchRequest, Recipient, Rejection, Screening
from massmailer.config import Settings
from massmailer.delivery.message import make_message_id
from massmailer.jobstore import Dispatch
from massmailer.models import Batch, EmailJob, Status
from massmailer.models.types import utcnow

jobs = EmailJob.__table__


@dataclass(frozen=True)
class StoredBatch:
    batch_id: int
    job_ids: list[int]
    priority: int
    send_at: datetime | None
    rejected: list[Rejection]
    # Jobs copied stamped as enqueued, the batch row's unconfirmed_since standing for them.
    marked: bool = False

    def response(self) -> dict:
        """The 202 body: the batch id, how many jobs were created, who was refused and why."""
        return {
            "id": self.batch_id,
            "accepted": len(self.job_ids),
            "rejected": [{"index": r.index, "to": r.to, "reason": r.reason} for r in self.rejected],
        }


def store(
    session: Session,
    request: BatchRequest,
    screening: Screening,
    *,
    api_key_id: int | None,
    settings: Settings,
) -> StoredBatch:
    """Insert the batch and its jobs in the session's transaction; the caller commits.

    The recipients are screened while their jobs are copied (`Screening.accepted`), so the
    batch's counts are written once that is done.
    """
    now = utcnow()
    batch = Batch(
        api_key_id=api_key_id,
        subject_template=request.template.subject,
        text_template=request.template.text,
        html_template=request.template.html,
        sender=request.from_addr,
        sender_name=request.from_name,
        priority=request.priority,
        category=request.category,
        send_at=request.send_at,
        accepted=0,
        rejected=0,
        created_at=now,
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    # Published right after the commit: mark the batch, not each job (migration 0008).
    marked = postgres and screening.most > 0 and not _scheduled(request.send_at, now)
    if marked:
        batch.unconfirmed_since = now
    session.add(batch)
    session.flush()
    job_ids: list[int] = []
    if screening.most:
        if postgres:
            domain = settings.message_id_domain
            job_ids = copy_jobs(
                session, batch, screening.accepted(), screening.most, domain, now, enqueued=marked
            )
        else:  # the embedded demo's SQLite: no COPY, no sequences
            accepted = list(screening.accepted())
            job_ids = _insert_jobs(session, batch, accepted, settings, now) if accepted else []
    batch.accepted, batch.rejected = len(job_ids), len(screening.rejected)
    if not job_ids:
        batch.unconfirmed_since = None
        marked = False
    return StoredBatch(
        batch.id, job_ids, request.priority, request.send_at, screening.rejected, marked
    )


def _scheduled(send_at: datetime | None, now: datetime) -> bool:
    return send_at is not None and send_at > now


def _insert_jobs(
    session: Session, batch: Batch, accepted: list[Recipient], settings: Settings, now: datetime
) -> list[int]:
    rows = [_job_row(batch, r, settings.message_id_domain, now) for r in accepted]
    # One executemany: SQLAlchemy turns it into multi-row INSERT ... RETURNING statements.
    return list(session.execute(insert(jobs).returning(jobs.c.job_id), rows).scalars())


def _job_row(batch: Batch, recipient: Recipient, domain: str, now: datetime) -> dict:
    return {
        "recipient": recipient.to_addr,
        "recipient_name": recipient.to_name,
        "sender": batch.sender,
        "sender_name": batch.sender_name,
        "subject": recipient.subject,
        "body": "",  # rendered when sent, from the batch's template
        "html": None,
        "headers": None,
        "priority": batch.priority,
        "category": batch.category,
        "send_at": batch.send_at,
        "status": Status.PENDING,
        "attempts": 0,
        "message_id": make_message_id(domain),
        "api_key_id": batch.api_key_id,
        "batch_id": batch.id,
        "template_vars": recipient.variables,
        "created_at": now,
        "updated_at": now,
    }


def publish(
    session: Session, publisher: dispatch.Publisher, stored: StoredBatch, *, chunk_size: int
) -> int:
    """Publish a committed batch's jobs in chunks, unless it is scheduled later."""
    dispatches = [Dispatch(job_id, stored.priority, 0) for job_id in stored.job_ids]
    if stored.marked:
        return dispatch.dispatch_marked(
            session, publisher, dispatches, chunk_size=chunk_size, batch_id=stored.batch_id
        )
    if _scheduled(stored.send_at, utcnow()):
        return 0  # the jobs wait in PostgreSQL; the sweeper releases them when due
    return dispatch.dispatch(session, publisher, dispatches, chunk_size=chunk_size)
