"""Claims: leases from the database's clock, renewed while a chunk progresses; a 250 always wins."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy
from sqlalchemy import event, select, text

from massmailer import jobstore
from massmailer.delivery.leases import LeaseKeeper
from massmailer.delivery.outcomes import OutcomeRecorder
from massmailer.extensions import db
from massmailer.jobstore import LEASE_GRACE_SECONDS
from massmailer.models import EmailAttempt, EmailJob
from massmailer.models.types import utcnow
from massmailer.services import build_services, deliver_chunk
from tests import infra

pytestmark = pytest.mark.integration

A, B = "a" * 32, "b" * 32


def post_emails(client, auth, n=1) -> list[int]:
    ids = []
    for i in range(n):
        payload = {"to": f"r{i}@example.com", "subject": "s", "text": "t"}
        response = client.post("/v1/emails", json=payload, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def lease_left(job_id: int) -> float:
    """Seconds from the database's now to the job's lease_until."""
    return db.session.execute(
        text(
            "SELECT extract(epoch FROM lease_until - clock_timestamp())"
            " FROM email_jobs WHERE job_id = :i"
        ),
        {"i": job_id},
    ).scalar()


def lapse(job_ids, by: float) -> None:
    """The lease ran out `by` seconds ago by the database's clock."""
    db.session.execute(
        text(
            "UPDATE email_jobs SET lease_until = clock_timestamp() - make_interval(secs => :s)"
            " WHERE job_id = ANY(:ids)"
        ),
        {"s": by, "ids": list(job_ids)},
    )
    db.session.commit()


def job(job_id: int) -> EmailJob:
    db.session.expire_all()
    return db.session.get(EmailJob, job_id)


@pytest.fixture
def services(app, settings):
    built = build_services(settings, app.extensions["massmailer.publisher"])
    yield built
    built.pools.close_all()


def test_a_claim_leases_by_the_database_clock_and_only_once(app, client, auth):
    [job_id] = post_emails(client, auth)

    [claimed] = jobstore.claim(db.session, [job_id], A, lease_seconds=45)
    again = jobstore.claim(db.session, [job_id], B, lease_seconds=45)

    assert claimed.job_id == job_id and again == []
    assert 43 < lease_left(job_id) <= 45.5
    assert job(job_id).claim_token == A


def test_renew_extends_held_leases_and_names_the_tokens_still_holding(app, client, auth):
    first, second = post_emails(client, auth, 2)
    jobstore.claim(db.session, [first], A, lease_seconds=5)
    jobstore.claim(db.session, [second], B, lease_seconds=5)
    recorder = OutcomeRecorder(db.session, B, utcnow)
    recorder.sent(second, "primary", "Q", "250 ok", accepted_at=utcnow())
    recorder.flush()  # B's only job is done: B holds nothing any more

    with db.engine.connect() as conn:
        held = jobstore.renew(conn, [A, B, "c" * 32], lease_seconds=60)

    assert held == {A}
    assert 58 < lease_left(first) <= 60.5


def test_a_keeper_renews_while_the_chunk_progresses_and_lets_a_stalled_one_lapse(app, client, auth):
    [job_id] = post_emails(client, auth)
    keeper = LeaseKeeper(db.engine, 3.0, renew_every=0.3, stall_after=1.0)
    claimed_at = time.monotonic()
    jobstore.claim(db.session, [job_id], A, lease_seconds=3.0)
    lease = keeper.hold(A, claimed_at)
    try:
        for _ in range(40):  # 4 s of progress: longer than the lease itself
            lease.progress()
            time.sleep(0.1)
        assert lease.remaining() > 1.5
        assert lease_left(job_id) > 1.5

        # No progress from now on: renewal stops and the lease runs out, here and in the table.
        infra.wait_until(lambda: lease.remaining() == 0, 10, message="the lease to run down")
        infra.wait_until(lambda: lease_left(job_id) < 0, 5, message="lease_until to pass")
    finally:
        keeper.close()


def test_a_keeper_that_cannot_reach_the_database_runs_its_leases_down(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    unreachable = sqlalchemy.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x")
    keeper = LeaseKeeper(unreachable, 1.5, renew_every=0.2)
    lease = keeper.hold(A, time.monotonic())
    try:
        assert 1.0 < lease.remaining() <= 1.5
        deadline = time.monotonic() + 10
        while lease.remaining() > 0 and time.monotonic() < deadline:
            lease.progress()  # sends go on finishing, but nothing is renewed
            time.sleep(0.05)
        assert lease.remaining() == 0
    finally:
        keeper.close()
        unreachable.dispose()


def test_a_released_lease_is_no_longer_renewed(app, client, auth):
    [job_id] = post_emails(client, auth)
    keeper = LeaseKeeper(db.engine, 2.0, renew_every=0.2)
    claimed_at = time.monotonic()
    jobstore.claim(db.session, [job_id], A, lease_seconds=2.0)
    lease = keeper.hold(A, claimed_at)
    lease.release()
    try:
        assert lease.remaining() == 0
        time.sleep(1.0)
        assert lease_left(job_id) < 1.5, "not renewed after release"
    finally:
        keeper.close()


def test_a_sent_outcome_flushed_after_the_lease_lapsed_wins_over_another_claim(
    app, client, auth, services, smtp_server
):
    [job_id] = post_emails(client, auth)
    jobstore.claim(db.session, [job_id], A, lease_seconds=30)
    recorder = OutcomeRecorder(db.session, A, utcnow)
    recorder.sent(job_id, "primary", "Q1", "250 ok: queued as Q1", accepted_at=utcnow())
    # The database was away; meanwhile the lease ran out. Within the grace nobody takes the job.
    lapse([job_id], by=1)
    assert jobstore.claim(db.session, [job_id], B, lease_seconds=30) == []
    assert jobstore.take_lost(db.session, timedelta(seconds=60), 100) == []

    recorder.flush()  # the database answers: the 250 is recorded

    assert (job(job_id).status, job(job_id).provider_queue_id) == ("SENT", "Q1")
    assert deliver_chunk(db.session, services, [job_id], budget_seconds=30).claimed == 0
    assert smtp_server.message_count == 0, "not sent again"


def test_a_sent_outcome_lands_even_after_the_sweeper_and_another_worker_took_the_job(
    app, client, auth
):
    [job_id] = post_emails(client, auth)
    jobstore.claim(db.session, [job_id], A, lease_seconds=30)
    recorder = OutcomeRecorder(db.session, A, utcnow)
    recorder.sent(job_id, "primary", "Q1", "250 ok", accepted_at=utcnow())
    lapse([job_id], by=LEASE_GRACE_SECONDS + 1)  # the outage outlasted lease and grace
    [taken] = jobstore.take_lost(db.session, timedelta(seconds=60), 100)
    assert taken.job_id == job_id
    [second] = jobstore.claim(db.session, [job_id], B, lease_seconds=30)
    late = OutcomeRecorder(db.session, B, utcnow)
    late.retry(second, error="451 try later", charged=1, tier_seconds=10, failed_provider="primary")

    recorder.flush()  # A's 250, late, still lands: SENT whoever holds the job
    late.flush()  # B's retry finds the job final and changes nothing

    row = job(job_id)
    assert (row.status, row.provider_queue_id, row.claim_token) == ("SENT", "Q1", None)
    assert row.next_attempt_at is None


def test_one_flush_is_one_update_and_one_insert_whatever_the_outcomes(app, client, auth):
    sent, failed, retried, foreign = post_emails(client, auth, 4)
    jobstore.claim(db.session, [sent, failed, retried], A, lease_seconds=30)
    jobstore.claim(db.session, [foreign], B, lease_seconds=30)
    retry_job = jobstore.ClaimedJob(**_claimed_fields(db.session.get(EmailJob, retried)))
    recorder = OutcomeRecorder(db.session, A, utcnow)
    recorder.attempt(sent, 1, "primary", "sent", smtp_code=250)
    recorder.sent(sent, "primary", "Q1", "250 ok", accepted_at=utcnow())
    recorder.attempt(failed, 1, "primary", "permanent_recipient", smtp_code=550)
    recorder.failed(failed, "primary", "550 no such user", charged=1)
    recorder.attempt(retried, 1, "primary", "transient", smtp_code=451)
    recorder.retry(
        retry_job,
        error="451 later",
        charged=1,
        tier_seconds=60,
        failed_provider="primary",
    )
    recorder.failed(foreign, "primary", "not mine", charged=1)  # held under B: left alone
    with captured_statements(db.engine) as statements:
        recorder.flush()

    writes = [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "BEGIN"))]
    assert len(writes) == 2, writes
    # The UPDATE sits in a CTE whose rows the same statement logs as events (jobstore/events.py).
    assert writes[0].startswith("WITH changed AS") and "FROM unnest(" in writes[0]
    assert "UPDATE email_jobs" in writes[0] and "INSERT INTO email_events" in writes[0]
    assert writes[1].startswith("INSERT INTO email_attempts")
    assert (job(sent).status, job(failed).status, job(retried).status) == (
        "SENT",
        "FAILED",
        "PENDING",
    )
    assert job(failed).last_error == "550 no such user"
    row = job(retried)
    assert (row.attempts, row.failed_provider, row.enqueued_at, row.claim_token) == (
        1,
        "primary",
        None,
        None,
    )
    wait = db.session.execute(
        text(
            "SELECT extract(epoch FROM next_attempt_at - clock_timestamp())"
            " FROM email_jobs WHERE job_id = :i"
        ),
        {"i": retried},
    ).scalar()
    assert 55 < wait <= 60.5
    assert (job(foreign).status, job(foreign).claim_token) == ("PENDING", B)
    assert len(db.session.scalars(select(EmailAttempt)).all()) == 3


@contextmanager
def captured_statements(engine):
    statements: list[str] = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def _claimed_fields(row: EmailJob) -> dict:
    return {name: getattr(row, name) for name in jobstore.ClaimedJob.__dataclass_fields__}


def test_cancel_leaves_a_lapsed_claim_alone_during_the_grace(app, client, auth):
    [job_id] = post_emails(client, auth)
    jobstore.claim(db.session, [job_id], A, lease_seconds=30)
    lapse([job_id], by=1)

    response = client.post(f"/v1/emails/{job_id}/cancel", headers=auth)

    assert response.status_code == 409
    assert job(job_id).status == "PENDING", "its holder may still record a 250"
    lapse([job_id], by=LEASE_GRACE_SECONDS + 1)
    assert client.post(f"/v1/emails/{job_id}/cancel", headers=auth).status_code == 200
