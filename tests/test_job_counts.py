"""job_counts stays equal to counting email_jobs, whatever statements change the jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from massmailer import jobstore
from massmailer.extensions import db
from massmailer.metrics.counts import batch_counts, job_counts
from massmailer.models import EmailJob, JobCount
from massmailer.models.types import utcnow

pytestmark = pytest.mark.integration


def counted() -> tuple[dict[str, int], dict[int, dict[str, int]]]:
    """Ground truth: count every row."""
    ids = list(db.session.scalars(select(EmailJob.batch_id).where(EmailJob.batch_id.is_not(None))))
    per_batch = {b: dict.fromkeys(("PENDING", "SENT", "FAILED", "CANCELLED"), 0) for b in ids}
    for b, status, n in db.session.execute(
        select(EmailJob.batch_id, EmailJob.status, func.count())
        .where(EmailJob.batch_id.is_not(None))
        .group_by(EmailJob.batch_id, EmailJob.status)
    ):
        per_batch[b][status] = n
    return jobstore.count_by_status(db.session), per_batch


def assert_counts_agree() -> None:
    overall, per_batch = counted()
    assert job_counts(db.session) == overall
    assert batch_counts(db.session, list(per_batch)) == per_batch


def test_counts_follow_inserts_outcomes_cancels_deletes_and_compaction(client, auth):
    batch = {
        "template": {"subject": "Hi", "text": "Hello {{ name }}"},
        "recipients": [{"to": f"r{i}@example.com", "vars": {"name": str(i)}} for i in range(6)],
    }
    batch_id = client.post("/v1/batches", json=batch, headers=auth).get_json()["id"]
    for i in range(3):
        single = {"to": f"s{i}@example.com", "subject": "Hi", "text": "Hello"}
        assert client.post("/v1/emails", json=single, headers=auth).status_code == 202
    assert job_counts(db.session)["PENDING"] == 9
    assert_counts_agree()

    ids = list(db.session.scalars(select(EmailJob.job_id).order_by(EmailJob.job_id)))
    claimed = jobstore.claim(db.session, ids[:4], "t" * 32, 60)
    assert len(claimed) == 4
    assert_counts_agree()  # a claim changes no status
    outcomes = [
        jobstore.OutcomeRow(i, "sent", provider="p", reply="250", charged=1) for i in ids[:2]
    ]
    outcomes.append(jobstore.OutcomeRow(ids[2], "failed", provider="p", error="550", charged=1))
    jobstore.write_outcomes(db.session, "t" * 32, outcomes)
    db.session.commit()
    assert_counts_agree()

    client.post(f"/v1/batches/{batch_id}/cancel", headers=auth)
    assert_counts_agree()
    db.session.execute(update(EmailJob).where(EmailJob.job_id == ids[-1]).values(status="SENT"))
    db.session.rollback()  # a rolled-back change leaves no trace
    assert_counts_agree()

    jobstore.compact_job_counts(db.session)
    rows = db.session.execute(select(JobCount.batch_id, JobCount.status)).all()
    assert len(rows) == len(set(rows)), "one row per (batch, status) after compaction"
    assert_counts_agree()

    jobstore.purge_final(db.session, utcnow() + timedelta(seconds=1))
    assert_counts_agree()
    db.session.execute(text("TRUNCATE email_attempts, email_events, email_jobs CASCADE"))
    db.session.commit()
    assert job_counts(db.session) == dict.fromkeys(("PENDING", "SENT", "FAILED", "CANCELLED"), 0)
