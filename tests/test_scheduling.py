"""send_at: scheduled jobs wait in PostgreSQL, not in the broker, and go out when due."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from massmailer import jobstore
from massmailer.extensions import db
from massmailer.models import EmailJob
from massmailer.models.types import utcnow
from massmailer.queues import SEND_QUEUE
from tests import infra

pytestmark = pytest.mark.integration

GRACE_SECONDS = 600  # far longer than any wait below: a due scheduled job must not wait for it


@pytest.fixture
def env(env):
    return {
        **env,
        "MASSMAILER_SWEEP_INTERVAL_SECONDS": "1",
        "MASSMAILER_PUBLISH_GRACE_SECONDS": str(GRACE_SECONDS),
    }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def post_email(client, auth, send_at: datetime, to="later@example.com"):
    payload = {"to": to, "subject": "Later", "text": "x", "send_at": rfc3339(send_at)}
    response = client.post("/v1/emails", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def post_batch(client, auth, send_at: datetime, n=3):
    payload = {
        "template": {"subject": "Hi {{ n }}", "text": "Number {{ n }}"},
        "recipients": [{"to": f"r{i}@example.com", "vars": {"n": i}} for i in range(n)],
        "send_at": rfc3339(send_at),
    }
    response = client.post("/v1/batches", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@contextmanager
def worker_with_beat(env, tmp_path):
    """A worker that also runs celery beat, so the periodic sweep releases due jobs."""
    worker = infra.WorkerProcess(env)
    worker.args += ["--beat", f"--schedule={tmp_path / 'beat-schedule'}"]
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def test_a_scheduled_email_and_batch_wait_in_postgres_not_in_the_broker(
    app, client, auth, broker_url
):
    app.extensions["massmailer.publisher"].ensure_topology()  # so the queue exists, empty
    later = utcnow() + timedelta(hours=1)
    job_id = post_email(client, auth, later)
    batch_id = post_batch(client, auth, later)

    jobs = db.session.scalars(select(EmailJob).order_by(EmailJob.job_id)).all()
    assert len(jobs) == 4 and all(j.status == "PENDING" and j.enqueued_at is None for j in jobs)
    assert infra.queue_depth(broker_url, SEND_QUEUE) == 0
    shown = client.get(f"/v1/emails/{job_id}", headers=auth).get_json()["send_at"]
    assert shown == rfc3339(later)
    assert client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()["status"] == "SCHEDULED"


def test_a_send_at_already_past_is_published_at_once(client, auth, broker_url):
    post_email(client, auth, utcnow() - timedelta(minutes=5))
    post_batch(client, auth, utcnow() - timedelta(minutes=5))

    assert infra.queue_depth(broker_url, SEND_QUEUE) == 2


def test_the_sweep_releases_a_scheduled_job_as_soon_as_it_is_due_without_the_grace(client, auth):
    due_id = post_email(client, auth, utcnow() + timedelta(hours=1), to="due@example.com")
    later_id = post_email(client, auth, utcnow() + timedelta(hours=1), to="later@example.com")
    # Time passes for the first one: it fell due a moment ago.
    db.session.execute(
        update(EmailJob)
        .where(EmailJob.job_id == due_id)
        .values(send_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()

    taken = jobstore.take_lost(db.session, timedelta(seconds=GRACE_SECONDS), 100)

    assert [d.job_id for d in taken] == [due_id], f"job {later_id} is not due yet"


@pytest.mark.slow
def test_scheduled_mail_goes_out_when_due_and_not_before(client, auth, env, smtp_server, tmp_path):
    send_at = utcnow() + timedelta(seconds=5)
    job_id = post_email(client, auth, send_at)
    batch_id = post_batch(client, auth, send_at)

    with worker_with_beat(env, tmp_path):
        assert smtp_server.message_count == 0
        infra.wait_until(lambda: smtp_server.message_count == 4, 30, 0.05, "four messages")
        arrived = utcnow()
        done = infra.wait_until(
            lambda: (
                client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()["status"] == "DONE"
            ),
            10,
            message="the batch to be DONE",
        )

    assert done
    job = db.session.get(EmailJob, job_id)
    sent_times = db.session.scalars(select(EmailJob.sent_at)).all()
    assert job.status == "SENT"
    assert min(sent_times) >= send_at, "nothing went out before its send_at"
    # Released by the next sweep (every second here), not after the publish grace (600 s).
    lateness = (arrived - send_at).total_seconds()
    print(f"\nscheduled mail arrived {lateness:.1f} s after send_at")
    assert lateness < 5
