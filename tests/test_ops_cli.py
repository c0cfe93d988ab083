"""Operator commands: status, providers, requeue FAILED jobs (once), purge old final jobs."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from massmailer.extensions import db
from massmailer.metrics.state import make_limits
from massmailer.models import EmailAttempt, EmailJob
from massmailer.models.types import utcnow
from tests import infra

pytestmark = pytest.mark.integration


def add_job(status: str, *, age: timedelta = timedelta(0), attempts: int = 0, **fields) -> int:
    """Insert a job that reached status `age` ago, with `attempts` attempt rows."""
    at = utcnow() - age
    job = EmailJob(
        recipient=fields.pop("recipient", f"{uuid.uuid4().hex[:8]}@example.com"),
        subject="Hello",
        body="Hi",
        sender="sender@massmailer.test",
        message_id=f"<{uuid.uuid4().hex}@massmailer.test>",
        status=status,
        attempts=attempts,
        created_at=at - timedelta(seconds=5),
        updated_at=at,
        **fields,
    )
    db.session.add(job)
    db.session.flush()
    for n in range(1, attempts + 1):
        db.session.add(
            EmailAttempt(job_id=job.job_id, attempt_no=n, provider="primary", outcome="transient")
        )
    db.session.commit()
    return job.job_id


def run(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


@pytest.fixture
def app(app):
    # The API and the workers declare the queues at start-up; here nothing has published yet.
    app.extensions["massmailer.publisher"].ensure_topology()
    return app


def test_status_shows_jobs_queues_and_providers(app):
    for status in ("PENDING", "PENDING", "SENT", "FAILED"):
        add_job(status)

    result = run(app, "status")

    assert result.exit_code == 0, result.output
    assert "jobs      PENDING 2  SENT 1  FAILED 1  CANCELLED 0" in result.output
    assert "queue     emails " in result.output
    assert "provider  primary" in result.output and "breaker closed" in result.output


def test_status_as_json_matches_the_database(app):
    add_job("SENT")
    add_job("CANCELLED")

    result = run(app, "status", "--json")

    assert result.exit_code == 0, result.output
    state = json.loads(result.output)
    assert state["jobs"] == {"PENDING": 0, "SENT": 1, "FAILED": 0, "CANCELLED": 1}
    assert {q["name"] for q in state["queues"]} >= {"emails", "emails.delay.10s"}
    assert state["providers"]["primary"]["state"] == "closed"
    assert state["errors"] == {}


def test_status_fails_naming_the_source_it_could_not_read(env):
    from massmailer import create_app
    from massmailer.config import load_settings

    app = create_app(load_settings({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}))

    result = run(app, "status")
    with app.app_context():
        db.engine.dispose()

    assert result.exit_code == 1
    assert "redis not reachable" in result.stderr


def test_providers_show_an_open_breaker(app, settings):
    limits = make_limits(settings)
    for _ in range(limits.settings.failure_threshold):
        limits.record_failure("primary")

    result = run(app, "providers")

    assert result.exit_code == 0, result.output
    assert "primary" in result.output and "no rate limit" in result.output
    assert "breaker open" in result.output
    assert "password" not in result.output


def test_requeue_moves_failed_jobs_of_a_time_range_back_once(app, env):
    recent = [add_job("FAILED", age=timedelta(minutes=m), attempts=2) for m in (5, 10, 20)]
    old = add_job("FAILED", age=timedelta(days=2), attempts=6)
    sent = add_job("SENT", age=timedelta(minutes=5), attempts=1)

    first = run(app, "jobs", "requeue", "--since", "1h")
    second = run(app, "jobs", "requeue", "--since", "1h")

    assert first.exit_code == 0, first.output
    assert "Requeued 3 FAILED job(s); 3 queued now" in first.output
    assert "Requeued 0 FAILED job(s)" in second.output
    db.session.expire_all()
    for job_id in recent:
        job = db.session.get(EmailJob, job_id)
        assert (job.status, job.attempts, job.last_error) == ("PENDING", 0, None)
        assert job.enqueued_at is not None  # the broker confirmed the publish
    assert db.session.get(EmailJob, old).status == "FAILED"
    assert db.session.get(EmailJob, sent).status == "SENT"
    # One chunk (one priority) published by the first run, none by the second.
    assert infra.queue_depth(env["BROKER_URL"], "emails") == 1


def test_requeue_by_batch_touches_only_that_batch(app):
    batches = pytest.importorskip("massmailer.models.batches")
    batch = batches.Batch(subject_template="Hi", sender="sender@massmailer.test")
    db.session.add(batch)
    db.session.commit()
    inside = add_job("FAILED", batch_id=batch.id)
    outside = add_job("FAILED")

    result = run(app, "jobs", "requeue", "--batch", str(batch.id))

    assert "Requeued 1 FAILED job(s)" in result.output, result.output
    db.session.expire_all()
    assert db.session.get(EmailJob, inside).status == "PENDING"
    assert db.session.get(EmailJob, outside).status == "FAILED"


def test_requeue_wants_a_selection(app):
    result = run(app, "jobs", "requeue")

    assert result.exit_code == 2
    assert "--batch" in result.output


def test_purge_deletes_old_final_jobs_with_their_attempts_in_batches(app):
    old_final = [
        add_job(status, age=timedelta(days=40), attempts=2)
        for status in ("SENT", "FAILED", "CANCELLED")
    ]
    old_pending = add_job("PENDING", age=timedelta(days=40), attempts=1)
    recent_sent = add_job("SENT", age=timedelta(days=3), attempts=1)

    result = run(app, "jobs", "purge", "--older-than-days", "30", "--batch-size", "2", "--yes")

    assert result.exit_code == 0, result.output
    assert "Deleted 3 job(s)" in result.output
    remaining = set(db.session.scalars(select(EmailJob.job_id)))
    assert remaining == {old_pending, recent_sent}
    attempts = db.session.scalar(
        select(func.count()).select_from(EmailAttempt).where(EmailAttempt.job_id.in_(old_final))
    )
    assert attempts == 0
    assert db.session.scalar(select(func.count()).select_from(EmailAttempt)) == 2
