"""Batch templates cached per process: a chunk spanning more batches than the cache holds."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import EmailJob
from massmailer.services import build_services

pytestmark = pytest.mark.integration

BATCHES = 100  # more than the 64 compiled templates a process keeps


def test_a_chunk_spanning_more_batches_than_the_cache_holds_sends_every_job(
    app, client, auth, settings, smtp_server
):
    for i in range(BATCHES):
        payload = {
            "template": {"subject": f"Batch {i}", "text": "Hello {{ name }} from batch " + str(i)},
            "recipients": [{"to": f"reader{i}@example.com", "vars": {"name": f"R{i}"}}],
        }
        response = client.post("/v1/batches", json=payload, headers=auth)
        assert response.status_code == 202, response.get_json()
    ids = list(db.session.scalars(select(EmailJob.job_id).order_by(EmailJob.job_id)))
    services = build_services(settings, app.extensions["massmailer.publisher"])
    try:
        # One chunk, as a sweep after a broker outage would hand a worker.
        report = services.delivery.deliver(db.session, ids, budget_seconds=120)
    finally:
        services.pools.close_all()

    db.session.expire_all()
    jobs = list(db.session.scalars(select(EmailJob).order_by(EmailJob.job_id)))
    failed = [(j.job_id, j.last_error) for j in jobs if j.status != "SENT"]
    assert (report.claimed, report.sent, failed) == (BATCHES, BATCHES, [])
    bodies = "".join(m.data.decode() for m in smtp_server.messages)
    assert smtp_server.message_count == BATCHES
    assert all(f"R{i} from batch {i}" in bodies for i in range(BATCHES))
