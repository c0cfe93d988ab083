"""What the sweeper takes back: only what the broker cannot be holding, judged by the database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from massmailer import jobstore
from massmailer.extensions import db
from massmailer.jobstore import LEASE_GRACE_SECONDS
from massmailer.models import EmailJob
from massmailer.models.types import utcnow

pytestmark = pytest.mark.integration

GRACE = timedelta(seconds=60)
LAPSED = timedelta(seconds=LEASE_GRACE_SECONDS + 1)  # a lease that ran out, and its grace too


def job(**columns) -> int:
    now = utcnow()
    row = EmailJob(
        recipient="a@example.com", subject="s", body="b", sender="s@example.com",
        status="PENDING", message_id=f"<{id(columns)}.{now.timestamp()}@test>",
        created_at=now, updated_at=columns.pop("updated_at", now), **columns,
    )  # fmt: skip
    db.session.add(row)
    db.session.commit()
    return row.job_id


def taken() -> set[int]:
    return {d.job_id for d in jobstore.take_lost(db.session, GRACE, limit=100)}


def test_only_jobs_the_broker_cannot_hold_are_taken(app):
    now = utcnow()
    long_ago = now - 2 * GRACE
    waiting_in_queue = job(enqueued_at=long_ago, updated_at=long_ago)
    never_confirmed = job(updated_at=long_ago)
    just_committed = job()
    scheduled_due = job(send_at=now - timedelta(seconds=1))
    scheduled_later = job(send_at=now + timedelta(hours=1))
    retry_not_due = job(updated_at=long_ago, next_attempt_at=now + timedelta(minutes=5))
    retry_due_unstamped = job(next_attempt_at=now - timedelta(seconds=1))
    retry_due_in_tier = job(next_attempt_at=now - timedelta(seconds=1), enqueued_at=now)
    lease_expired = job(claim_token="dead-worker", lease_until=now - LAPSED, enqueued_at=long_ago)
    lease_in_grace = job(claim_token="slow-worker", lease_until=now - timedelta(seconds=1))
    lease_live = job(claim_token="busy-worker", lease_until=now + timedelta(minutes=5))

    got = taken()

    assert got == {never_confirmed, scheduled_due, retry_due_unstamped, lease_expired}
    assert not got & {
        waiting_in_queue,
        just_committed,
        scheduled_later,
        retry_not_due,
        retry_due_in_tier,
        lease_in_grace,
        lease_live,
    }


def test_a_taken_job_whose_new_publish_fails_is_found_again(app):
    dead = job(
        claim_token="dead-worker",
        lease_until=utcnow() - LAPSED,
        enqueued_at=utcnow() - timedelta(hours=1),
    )

    [first] = jobstore.take_lost(db.session, GRACE, limit=100)
    row = db.session.get(EmailJob, dead)
    db.session.refresh(row)

    # No confirm follows (the publish failed): the job must not look enqueued.
    assert (row.claim_token, row.lease_until, row.enqueued_at) == (None, None, None)
    assert taken() == set(), "within the publish grace the new publish may still be confirmed"
    db.session.execute(
        update(EmailJob).where(EmailJob.job_id == dead).values(updated_at=utcnow() - 2 * GRACE)
    )
    db.session.commit()
    assert taken() == {dead}
    assert first.seq == 1
