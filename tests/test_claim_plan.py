"""At a million rows the claim and the outcome flush find their rows by primary key."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
from sqlalchemy import event, text

from massmailer import jobstore
from massmailer.delivery.outcomes import OutcomeRecorder
from massmailer.extensions import db
from massmailer.models.types import utcnow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 1_000_000
WAITING = 900_000  # PENDING and enqueued: the backlog in the queue; the rest are SENT
TOKEN = "p" * 32
BATCHES = 20_000


def load_million() -> None:
    # Batches too, a tenth of them cancelled: the claim checks its jobs' batches.
    db.session.execute(
        text(
            """
            INSERT INTO batches (subject_template, sender, created_at, cancelled_at)
            SELECT 's', 's@example.com', now(), CASE WHEN g % 10 = 0 THEN now() END
            FROM generate_series(1, :n) AS g
            """
        ),
        {"n": BATCHES},
    )
    db.session.execute(
        text(
            """
            INSERT INTO email_jobs (recipient, subject, body, sender, status, message_id,
                                    priority, created_at, updated_at, enqueued_at, sent_at,
                                    batch_id)
            SELECT 'r' || g || '@example.com', 'subject', 'body', 's@example.com',
                   CASE WHEN g <= :waiting THEN 'PENDING' ELSE 'SENT' END,
                   '<' || g || '@plan.test>', g % 3,
                   now() - interval '1 hour', now() - interval '1 hour',
                   CASE WHEN g <= :waiting THEN now() - interval '1 hour' END,
                   CASE WHEN g > :waiting THEN now() - interval '1 hour' END,
                   CASE WHEN g % 2 = 0 THEN (g / 2) % :batches * 10 + 1 END
            FROM generate_series(1, :rows) AS g
            """
        ),
        {"rows": ROWS, "waiting": WAITING, "batches": BATCHES // 10},
    )
    db.session.commit()
    db.session.execute(text("ANALYZE email_jobs"))
    db.session.execute(text("ANALYZE batches"))
    db.session.commit()


@contextmanager
def explained(engine, table_prefix: str | tuple[str, ...]):
    """EXPLAIN each statement that starts with table_prefix, just before it runs for real."""
    plans: list[str] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith(table_prefix):
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)


def test_the_claim_and_the_flush_use_the_primary_key_at_a_million_rows(app):
    started = time.monotonic()
    load_million()
    print(f"\nloaded {ROWS:,} rows in {time.monotonic() - started:.1f} s")
    chunk = list(range(450_001, 450_201))  # 200 waiting jobs in the middle of the backlog

    # The flush is its UPDATE in a CTE that logs its events (jobstore/events.py).
    with explained(db.engine, ("UPDATE email_jobs", "WITH changed AS")) as plans:
        started = time.monotonic()
        claimed = jobstore.claim(db.session, chunk, TOKEN, lease_seconds=45)
        claim_ms = (time.monotonic() - started) * 1000
        recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
        for job in claimed:
            recorder.sent(job.job_id, "primary", "Q", "250 ok", accepted_at=utcnow())
        started = time.monotonic()
        recorder.flush()
        flush_ms = (time.monotonic() - started) * 1000

    claim_plan, flush_plan = plans
    print(f"claim of 200 ({claim_ms:.0f} ms):\n{claim_plan}\nflush of 200 ({flush_ms:.0f} ms):")
    print(flush_plan)
    assert len(claimed) == 200
    for plan in (claim_plan, flush_plan):
        assert "pk_email_jobs" in plan
        assert "Seq Scan on email_jobs" not in plan
    sent = db.session.execute(
        text("SELECT count(*) FROM email_jobs WHERE status = 'SENT' AND job_id = ANY(:ids)"),
        {"ids": chunk},
    ).scalar()
    assert sent == 200
    print_warm_timings()
    print_renew_plan()


def print_warm_timings() -> None:
    """A second chunk, not explained: what a claim and a flush cost once the pages are warm."""
    chunk = list(range(460_001, 460_201))
    started = time.monotonic()
    claimed = jobstore.claim(db.session, chunk, TOKEN, lease_seconds=45)
    claim_ms = (time.monotonic() - started) * 1000
    recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
    for job in claimed:
        recorder.attempt(job.job_id, 1, "primary", "sent", smtp_code=250)
        recorder.sent(job.job_id, "primary", "Q", "250 ok", accepted_at=utcnow())
    started = time.monotonic()
    recorder.flush()
    flush_ms = (time.monotonic() - started) * 1000
    print(
        f"warm: claim of 200 {claim_ms:.0f} ms, flush of 200 outcomes + attempts {flush_ms:.0f} ms"
    )


def print_renew_plan() -> None:
    """For the record: renew finds claimed rows by claim_token, which only a partial index on
    claimed rows (migration 0003's business, not this branch's) makes cheap."""
    with explained(db.engine, "UPDATE email_jobs") as plans, db.engine.connect() as conn:
        jobstore.renew(conn, [TOKEN], lease_seconds=45)
    print(f"renew:\n{plans[0]}")


def test_a_batch_newer_than_the_statistics_is_still_claimed_and_flushed_by_primary_key(app):
    # ANALYZE ran while every job was SENT; then a large batch landed and no sweep has analysed
    # it yet. A bare status = 'PENDING' made the planner read every PENDING job through the
    # pending index for each claim and flush (25-30 ms each at 60,000, bench/README.md). With that
    # index out of the question, the table's real size decides between the primary key and a
    # sequential scan: at 100,000 rows the primary key wins by a wide margin.
    insert = """
        INSERT INTO email_jobs (recipient, subject, body, sender, status, message_id, priority,
                                created_at, updated_at, enqueued_at, sent_at)
        SELECT 'r' || g || '@example.com', 'subject', 'body', 's@example.com', :status,
               '<' || g || '@stale.test>', 0, now(), now(), now(),
               CASE WHEN :status = 'SENT' THEN now() END
        FROM generate_series(:first, :last) AS g
    """
    db.session.execute(text(insert), {"status": "SENT", "first": 1, "last": 20_000})
    db.session.commit()
    db.session.execute(text("ANALYZE email_jobs"))
    db.session.execute(text(insert), {"status": "PENDING", "first": 20_001, "last": 100_000})
    db.session.commit()
    first_pending = db.session.scalar(
        text("SELECT min(job_id) FROM email_jobs WHERE status = 'PENDING'")
    )
    chunk = list(range(first_pending + 20_000, first_pending + 20_200))

    with explained(db.engine, ("UPDATE email_jobs", "WITH changed AS")) as plans:
        claimed = jobstore.claim(db.session, chunk, TOKEN, lease_seconds=45)
        recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
        for job in claimed:
            recorder.sent(job.job_id, "primary", "Q", "250 ok", accepted_at=utcnow())
        recorder.flush()

    claim_plan, flush_plan = plans
    print(f"\nclaim:\n{claim_plan}\nflush:\n{flush_plan}")
    assert len(claimed) == 200
    for plan in (claim_plan, flush_plan):
        assert "pk_email_jobs" in plan
        assert "ix_email_jobs_pending_created_at" not in plan
        assert "ix_email_jobs_status_updated_at" not in plan
        assert "Seq Scan on email_jobs" not in plan
