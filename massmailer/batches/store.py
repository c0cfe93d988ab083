"""Store a screened batch with one multi-row INSERT, publish it after the commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from massmailer import dispatch
from massmailer.batches.intake import BatchRequest, Recipient, Rejection, Screened
from massmailer.config import Settings
from massmailer.jobstore import Dispatch
from massmailer.message import make_message_id
from massmailer.models import Batch, EmailJob, Status
from massmailer.models.types import utcnow

jobs = EmailJob.__table__

# A load this large can leave the planner believing few jobs are PENDING, and then the claim
# (job_id IN (...) AND status = 'PENDING') scans every pending row through the status index.
ANALYZE_AFTER_JOBS = 1000
ANALYZE_LOCK_KEY = 0x6D6D_616E_616C_7A  # "mm analz": one ANALYZE at a time; others skip theirs


@dataclass(frozen=True)
class StoredBatch:
    batch_id: int
    job_ids: list[int]
    priority: int
    send_at: datetime | None
    rejected: list[Rejection]

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
    screened: Screened,
    *,
    api_key_id: int | None,
    settings: Settings,
) -> StoredBatch:
    """Insert the batch and its jobs in the session's transaction; the caller commits."""
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
        accepted=len(screened.accepted),
        rejected=len(screened.rejected),
        created_at=now,
    )
    session.add(batch)
    session.flush()
    rows = [_job_row(batch, r, settings.message_id_domain, now) for r in screened.accepted]
    job_ids: list[int] = []
    if rows:
        # One executemany: SQLAlchemy turns it into multi-row INSERT ... RETURNING statements.
        job_ids = list(session.execute(insert(jobs).returning(jobs.c.job_id), rows).scalars())
    return StoredBatch(batch.id, job_ids, request.priority, request.send_at, screened.rejected)


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
    if stored.send_at is not None and stored.send_at > utcnow():
        return 0  # the jobs wait in PostgreSQL; the sweeper releases them when due
    dispatches = [Dispatch(job_id, stored.priority, 0) for job_id in stored.job_ids]
    return dispatch.dispatch(session, publisher, dispatches, chunk_size=chunk_size)


def refresh_statistics(session: Session, stored: StoredBatch) -> bool:
    """ANALYZE email_jobs after a large batch so the claim keeps using the primary key."""
    if len(stored.job_ids) < ANALYZE_AFTER_JOBS or session.get_bind().dialect.name != "postgresql":
        return False
    got = session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ANALYZE_LOCK_KEY})
    if got:
        session.execute(text("ANALYZE email_jobs"))
    session.commit()
    return bool(got)
