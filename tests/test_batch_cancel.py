"""Cancelling a batch while a worker hands one of its jobs back for a retry."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.extensions import db
from massmailer.models import EmailJob
from massmailer.models.types import utcnow

pytestmark = pytest.mark.integration

TOKEN = "c" * 32


def worker_hands_back_for_retry(job_id: int) -> set[int]:
    """What a worker does after a 451, on its own connection: retry, then drop it if cancelled."""
    with Session(db.engine) as session:
        now = utcnow()
        row = jobstore.OutcomeRow(
            job_id,
            "retry",
            error="451 try later",
            charged=1,
            tier_seconds=10,
            failed_provider="primary",
        )
        jobstore.write_outcomes(session, TOKEN, [row])
        session.commit()
        dropped = jobstore.cancel_if_batch_cancelled(session, [job_id], now)
        session.commit()
        return dropped


def test_a_retry_handed_back_while_the_cancel_counts_is_cancelled_not_dispatched(
    client, auth, monkeypatch
):
    payload = {
        "template": {"subject": "Hi", "text": "Hello {{ name }}"},
        "recipients": [{"to": f"r{i}@example.com", "vars": {"name": str(i)}} for i in range(2)],
    }
    batch_id = client.post("/v1/batches", json=payload, headers=auth).get_json()["id"]
    ids = list(db.session.scalars(select(EmailJob.job_id).where(EmailJob.batch_id == batch_id)))
    # A worker is sending the first job right now.
    jobstore.claim(db.session, ids[:1], TOKEN, 600)

    seen: list[set[int]] = []
    batch_stats = jobstore.batch_stats

    def stats_while_a_worker_hands_back(session, batch, now):
        # The cancel is computing its statistics: the worker's 451 comes back at this moment.
        seen.append(worker_hands_back_for_retry(ids[0]))
        return batch_stats(session, batch, now)

    monkeypatch.setattr(jobstore, "batch_stats", stats_while_a_worker_hands_back)
    response = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth)

    assert response.status_code == 200
    assert seen == [{ids[0]}], "the worker saw the cancel and did not dispatch the retry"
    db.session.expire_all()
    statuses = {j.job_id: j.status for j in db.session.scalars(select(EmailJob))}
    assert statuses == {ids[0]: "CANCELLED", ids[1]: "CANCELLED"}
