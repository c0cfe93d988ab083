"""Once a job is committed the API answers 202, whatever fails after the commit.

A 5xx after the commit tells the client nothing was created; one that retries without an
Idempotency-Key then creates every email twice. The failures here are PostgreSQL's own: a
trigger refusing the enqueued stamp or the batch's confirmation, and a lock that makes the
ANALYZE time out.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg2
import pytest
from sqlalchemy import select, text

from massmailer import jobstore
from massmailer.extensions import db
from massmailer.models import Batch, EmailJob
from massmailer.queues import SEND_QUEUE
from tests import infra

pytestmark = pytest.mark.integration


@pytest.fixture
def stamp_refused(app):
    """PostgreSQL refuses every enqueued stamp (as a database failing mid-request would)."""
    db.session.execute(
        text(
            "CREATE FUNCTION refuse_stamp() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'stamp refused by the test'; END $$;"
            " CREATE TRIGGER refuse_stamp BEFORE UPDATE OF enqueued_at ON email_jobs"
            " FOR EACH ROW WHEN (NEW.enqueued_at IS NOT NULL) EXECUTE FUNCTION refuse_stamp()"
        )
    )
    db.session.commit()
    yield
    db.session.rollback()
    db.session.execute(
        text("DROP TRIGGER refuse_stamp ON email_jobs; DROP FUNCTION refuse_stamp()")
    )
    db.session.commit()


def stored_jobs() -> list[EmailJob]:
    db.session.expire_all()
    return list(db.session.scalars(select(EmailJob).order_by(EmailJob.job_id)))


def test_an_email_whose_enqueued_stamp_fails_is_still_accepted_once(
    client, auth, broker_url, stamp_refused
):
    payload = {"to": "reader@example.com", "subject": "Hi", "text": "Hello"}

    response = client.post("/v1/emails", json=payload, headers=auth)

    assert response.status_code == 202, response.get_json()
    jobs = stored_jobs()
    assert [(j.job_id, j.status) for j in jobs] == [(response.get_json()["id"], "PENDING")]
    assert jobs[0].enqueued_at is None, "unstamped: the sweeper re-publishes it after the grace"
    assert infra.queue_depth(broker_url, SEND_QUEUE) == 1, "published before the stamp failed"


@pytest.fixture
def mark_kept(app):
    """PostgreSQL refuses to clear a batch's unconfirmed mark (the step after the confirms)."""
    db.session.execute(
        text(
            "CREATE FUNCTION keep_mark() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'mark kept by the test'; END $$;"
            " CREATE TRIGGER keep_mark BEFORE UPDATE OF unconfirmed_since ON batches"
            " FOR EACH ROW WHEN (NEW.unconfirmed_since IS NULL) EXECUTE FUNCTION keep_mark()"
        )
    )
    db.session.commit()

    def drop() -> None:
        db.session.rollback()
        db.session.execute(text("DROP TRIGGER IF EXISTS keep_mark ON batches"))
        db.session.commit()

    yield drop
    drop()
    db.session.execute(text("DROP FUNCTION keep_mark()"))
    db.session.commit()


def test_a_batch_whose_confirmation_fails_is_accepted_and_the_sweep_publishes_it_again(
    client, auth, broker_url, mark_kept
):
    payload = {
        "template": {"subject": "Hi", "text": "Hello {{ name }}"},
        "recipients": [{"to": f"r{i}@example.com", "vars": {"name": str(i)}} for i in range(5)],
    }

    response = client.post("/v1/batches", json=payload, headers=auth)

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == 5
    jobs = stored_jobs()
    assert len(jobs) == 5 and {j.status for j in jobs} == {"PENDING"}
    assert all(j.enqueued_at is not None for j in jobs), "copied stamped, as published"
    batch = db.session.get(Batch, response.get_json()["id"])
    assert batch.unconfirmed_since is not None, "the mark stays: the confirms are not recorded"
    assert infra.queue_depth(broker_url, SEND_QUEUE) >= 1

    # As if the request had died before its confirms: past the grace, the sweep takes them back.
    mark_kept()
    assert jobstore.unmark_lapsed(db.session, timedelta(0)) == 1
    assert {j.enqueued_at for j in stored_jobs()} == {None}
    lost = jobstore.take_lost(db.session, timedelta(0), 100)
    assert sorted(d.job_id for d in lost) == [j.job_id for j in jobs]
    db.session.expire_all()
    assert db.session.get(Batch, batch.id).unconfirmed_since is None


def test_a_large_batch_whose_analyze_fails_is_still_accepted(
    app, client, auth, database_url, migrated
):
    name = database_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(infra.PG_ADMIN_DSN)
    admin.autocommit = True
    locker = psycopg2.connect(database_url)
    try:
        # ANALYZE needs a SHARE UPDATE EXCLUSIVE lock, which inserts and updates do not: hold
        # one elsewhere and let the app's connections give up waiting after a moment.
        with admin.cursor() as cur:
            cur.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '300ms'")
        db.session.remove()
        db.engine.dispose()
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE email_jobs IN SHARE UPDATE EXCLUSIVE MODE")
        payload = {
            "template": {"subject": "Hi", "text": "Hello {{ name }}"},
            "recipients": [
                {"to": f"r{i}@example.com", "vars": {"name": str(i)}} for i in range(1000)
            ],
        }

        response = client.post("/v1/batches", json=payload, headers=auth)
    finally:
        locker.rollback()
        locker.close()
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" RESET lock_timeout')
        admin.close()
        db.session.remove()
        db.engine.dispose()

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == 1000
    assert len(stored_jobs()) == 1000
