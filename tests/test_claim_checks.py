"""What a claim and the sweeper honour: a cancelled batch, and jobs that are not due yet."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from massmailer import sweeper
from massmailer.extensions import db
from massmailer.models import Batch, EmailJob
from massmailer.models.types import utcnow
from massmailer.services import build_services, deliver_chunk

pytestmark = pytest.mark.integration


@pytest.fixture
def services(app, settings):
    built = build_services(settings, app.extensions["massmailer.publisher"])
    yield built
    built.pools.close_all()


def post_batch(client, auth, n=2) -> tuple[int, list[int]]:
    payload = {
        "template": {"subject": "Hi {{ n }}", "text": "Number {{ n }}"},
        "recipients": [{"to": f"r{i}@example.com", "vars": {"n": i}} for i in range(n)],
    }
    response = client.post("/v1/batches", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    batch_id = response.get_json()["id"]
    ids = db.session.scalars(select(EmailJob.job_id).where(EmailJob.batch_id == batch_id)).all()
    return batch_id, sorted(ids)


def post_email(client, auth, to="one@example.com") -> int:
    payload = {"to": to, "subject": "s", "text": "t"}
    response = client.post("/v1/emails", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def cancel_behind_the_workers_back(batch_id: int) -> None:
    """The batch is cancelled while its jobs are in flight or on their way back for a retry."""
    db.session.execute(update(Batch).where(Batch.id == batch_id).values(cancelled_at=utcnow()))
    db.session.commit()


def set_jobs(ids, **values) -> None:
    db.session.execute(update(EmailJob).where(EmailJob.job_id.in_(ids)).values(**values))
    db.session.commit()


def statuses(ids) -> list[str]:
    db.session.expire_all()
    return [db.session.get(EmailJob, i).status for i in ids]


def test_a_claim_sends_nothing_of_a_cancelled_batch(client, auth, services, smtp_server):
    batch_id, ids = post_batch(client, auth)
    cancel_behind_the_workers_back(batch_id)

    report = deliver_chunk(db.session, services, ids, budget_seconds=30)

    assert report.sent == 0 and smtp_server.message_count == 0
    assert statuses(ids) == ["CANCELLED", "CANCELLED"]


def test_the_sweeper_cancels_instead_of_resending_a_cancelled_batchs_lost_claim(
    client, auth, services
):
    batch_id, ids = post_batch(client, auth)
    # A worker claimed them, died, and its lease ran out long ago; then the batch was cancelled.
    set_jobs(ids, claim_token="d" * 32, lease_until=utcnow() - timedelta(hours=1))
    cancel_behind_the_workers_back(batch_id)

    published = sweeper.sweep(db.session, services)

    assert published == 0
    assert statuses(ids) == ["CANCELLED", "CANCELLED"]


@pytest.mark.parametrize("column", ["send_at", "next_attempt_at"])
def test_a_job_acked_before_it_is_due_is_found_again_when_due(
    client, auth, services, smtp_server, column
):
    job_id = post_email(client, auth)
    # Its message reached a worker early (a clock that runs ahead, a tier message come back
    # early): the job is stamped enqueued and not due yet.
    set_jobs([job_id], **{column: utcnow() + timedelta(minutes=5), "enqueued_at": utcnow()})

    report = deliver_chunk(db.session, services, [job_id], budget_seconds=30)
    assert report.claimed == 0  # acked without sending: the message is gone
    set_jobs([job_id], **{column: utcnow() - timedelta(seconds=1)})  # time passes

    published = sweeper.sweep(db.session, services)

    assert published == 1
    assert smtp_server.message_count == 0
