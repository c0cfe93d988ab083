"""Outcomes are durable: a failed flush keeps them, and no value can make every flush fail."""

from __future__ import annotations

from datetime import timedelta

import psycopg2
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from massmailer.delivery.outcomes import OutcomeRecorder, flush_until_recorded
from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob
from massmailer.models.types import utcnow
from tests import infra

pytestmark = pytest.mark.integration

TOKEN = "a" * 32


def held_job(client, auth, to="one@example.com", token=TOKEN) -> int:
    """A job accepted by the API and claimed under token by a live worker."""
    payload = {"to": to, "subject": "s", "text": "t"}
    response = client.post("/v1/emails", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    db.session.execute(
        update(EmailJob)
        .where(EmailJob.job_id == job_id)
        .values(claim_token=token, lease_until=utcnow() + timedelta(minutes=1))
    )
    db.session.commit()
    return job_id


def job(job_id: int) -> EmailJob:
    db.session.expire_all()
    return db.session.get(EmailJob, job_id)


def attempts(job_id: int) -> list[EmailAttempt]:
    query = (
        select(EmailAttempt)
        .where(EmailAttempt.job_id == job_id)
        .order_by(EmailAttempt.attempt_no, EmailAttempt.id)
    )
    return db.session.scalars(query).all()


def test_a_provider_reply_too_long_for_its_columns_is_truncated_not_fatal(app, client, auth):
    job_id = held_job(client, auth)
    recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
    provider = "p" * 60  # the column holds 50
    recorder.attempt(job_id, 1, provider, "sent", smtp_code=250, enhanced="2.0.0" + "9" * 20)
    recorder.sent(
        job_id, provider, "q" * 300, "250 2.0.0 queued\x00" + "x" * 600, accepted_at=utcnow()
    )

    recorder.flush()

    row = job(job_id)
    assert row.status == "SENT"
    assert row.provider == "p" * 50
    assert len(row.provider_queue_id) == 255 and len(row.provider_reply) <= 512
    assert "\x00" not in row.provider_reply
    [attempt] = attempts(job_id)
    assert attempt.provider == "p" * 50 and len(attempt.enhanced_code) <= 16


def test_numbers_times_and_nulls_reach_their_columns_as_recorded(app, client, auth):
    # Numbers and times travel as array literals (jobstore/outcome_writes.py): every value,
    # NULL included, must land as it was recorded, microseconds and all.
    first, second = held_job(client, auth), held_job(client, auth, to="two@example.com")
    at = [utcnow() - timedelta(seconds=3, microseconds=123457), utcnow()]
    clock = iter([*at, utcnow(), utcnow()])  # then the flush's own readings
    recorder = OutcomeRecorder(db.session, TOKEN, lambda: next(clock))
    recorder.attempt(first, 1, "p1", "sent", smtp_code=250, duration_ms=2**31 + 5)
    recorder.attempt(second, 3, "p2", "transient", smtp_code=None, error="timed out")
    recorder.sent(first, "p1", "Q1", "250 ok", accepted_at=at[0])
    recorder.failed(second, "p2", "timed out", charged=1)
    recorder.flush()

    [one], [two] = attempts(first), attempts(second)
    assert (one.attempt_no, one.smtp_code, one.duration_ms) == (1, 250, 2**31 - 1)
    assert (two.attempt_no, two.smtp_code, two.duration_ms) == (3, None, None)
    assert [one.created_at, two.created_at] == at
    assert (job(first).status, job(first).attempts) == ("SENT", 1)
    assert (job(second).status, job(second).attempts) == ("FAILED", 1)


def test_a_failed_flush_keeps_the_outcomes_for_the_next_one(app, client, auth):
    job_id = held_job(client, auth)
    recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
    recorder.attempt(job_id, 1, "primary", "sent", smtp_code=250)
    recorder.sent(job_id, "primary", "Q1", "250 ok: queued as Q1", accepted_at=utcnow())
    # The database connection drops under the flush (a restart, a network cut).
    pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar()
    terminate_backend(pid)

    with pytest.raises(Exception):  # noqa: B017  (the driver's error for a dropped connection)
        recorder.flush()
    assert recorder.pending() == 1, "the delivered outcome is still buffered"
    recorder.flush()  # the database answers again

    row = job(job_id)
    assert (row.status, row.provider_queue_id, row.claim_token) == ("SENT", "Q1", None)
    assert len(attempts(job_id)) == 1


def terminate_backend(pid: int) -> None:
    conn = psycopg2.connect(infra.PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    conn.close()


class FlakyRecorder:
    """Stands in for OutcomeRecorder: its flush fails `failures` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures, self.flushes = failures, 0

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes <= self.failures:
            raise OperationalError("UPDATE …", {}, Exception("server closed the connection"))

    def pending(self) -> int:
        return 0 if self.flushes > self.failures else 3


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_outcomes_are_flushed_again_until_the_database_answers():
    recorder, clock = FlakyRecorder(failures=3), FakeTime()

    written = flush_until_recorded(
        recorder, give_up_after=60, pause=1.0, monotonic=clock.monotonic, sleep=clock.sleep
    )

    assert written and recorder.flushes == 4 and clock.now == 3.0


def test_flushing_gives_up_after_its_patience_and_says_so():
    recorder, clock = FlakyRecorder(failures=1000), FakeTime()

    written = flush_until_recorded(
        recorder, give_up_after=10, pause=1.0, monotonic=clock.monotonic, sleep=clock.sleep
    )

    assert not written and recorder.pending() == 3 and 9 <= clock.now <= 10
