"""A worker whose clock is off can neither take a live claim or an early job, nor keep a claim
too short: lease and due times are the database's. The worker runs under libfaketime."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob
from massmailer.models.types import utcnow
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SKEW = timedelta(minutes=10)
FAKETIME = shutil.which("faketime")


def skewed_worker(env, offset: timedelta) -> infra.WorkerProcess:
    """A real worker whose every clock (datetime, time.time) is off by offset."""
    assert FAKETIME, "faketime (libfaketime) must be installed: .ci/run installs it"
    worker = infra.WorkerProcess(env, concurrency=1)
    seconds = int(offset.total_seconds())
    worker.args = [FAKETIME, "-f", f"{seconds:+d}s", *worker.args]
    return worker


def post_emails(client, auth, n, prefix) -> list[int]:
    ids = []
    for i in range(n):
        payload = {"to": f"{prefix}{i}@example.com", "subject": "s", "text": "t"}
        response = client.post("/v1/emails", json=payload, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def job(job_id: int) -> EmailJob:
    db.session.expire_all()
    return db.session.get(EmailJob, job_id)


def attempt_time(job_id: int):
    """When the worker says it tried the job: its own (skewed) clock."""
    db.session.expire_all()
    return db.session.scalars(
        select(EmailAttempt.created_at).where(EmailAttempt.job_id == job_id)
    ).one()


def test_a_worker_running_ahead_takes_no_live_claim_and_no_job_before_it_is_due(
    app, client, auth, env, smtp_server
):
    live, scheduled, due = post_emails(client, auth, 3, prefix="ahead")
    # Another worker holds `live` for two more minutes; `scheduled` is due in five; both are
    # already past due by the skewed worker's clock (ten minutes ahead).
    db.session.execute(
        text(
            "UPDATE email_jobs SET claim_token = :t,"
            " lease_until = clock_timestamp() + interval '2 minutes' WHERE job_id = :i"
        ),
        {"t": "o" * 32, "i": live},
    )
    db.session.execute(
        update(EmailJob)
        .where(EmailJob.job_id == scheduled)
        .values(send_at=utcnow() + timedelta(minutes=5), enqueued_at=utcnow())
    )
    db.session.commit()
    infra.purge_queues(env["BROKER_URL"], ["emails"])
    app.extensions["massmailer.publisher"].publish([live, scheduled, due], 0)

    worker = skewed_worker(env, SKEW).start()
    try:
        infra.wait_until(lambda: job(due).status == "SENT", 60, message="the due job sent")
    finally:
        worker.stop()

    assert attempt_time(due) - utcnow() > SKEW - timedelta(minutes=1), "the worker ran skewed"
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == ["ahead2@example.com"]
    assert (job(live).status, job(live).claim_token) == ("PENDING", "o" * 32)
    row = job(scheduled)
    assert (row.status, row.claim_token) == ("PENDING", None)
    assert row.enqueued_at is None, "acked before due: the sweeper must find it when due"


@pytest.fixture
def smtp_server():
    # Slow replies keep a message in flight long enough to look at its claim.
    with FaultSMTPServer(latency_seconds=0.5) as server:
        yield server


def test_a_worker_running_behind_holds_a_full_lease_by_the_database_clock(
    app, client, auth, env, smtp_server
):
    [job_id] = post_emails(client, auth, 1, prefix="behind")
    lease = int(env.get("MASSMAILER_LEASE_SECONDS") or 45)

    worker = skewed_worker(env, -SKEW).start()
    try:
        infra.wait_until(lambda: job(job_id).claim_token, 60, 0.05, "the job to be claimed")
        left = db.session.execute(
            text(
                "SELECT extract(epoch FROM lease_until - clock_timestamp())"
                " FROM email_jobs WHERE job_id = :i AND claim_token IS NOT NULL"
            ),
            {"i": job_id},
        ).scalar()
        infra.wait_until(lambda: job(job_id).status == "SENT", 60, message="the job sent")
    finally:
        worker.stop()

    print(f"\nlease left while the skewed worker sent: {left:.1f} s of {lease}")
    assert left is not None and lease - 15 < left <= lease + 1
    assert utcnow() - attempt_time(job_id) > SKEW - timedelta(minutes=1), "the worker ran skewed"
    assert smtp_server.message_count == 1
