"""A job that cannot be sent within MASSMAILER_MAX_AGE_SECONDS ends FAILED `expired`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from massmailer import sweeper
from massmailer.config import ConfigError, load_settings
from massmailer.extensions import db
from massmailer.models import EmailJob
from massmailer.models.types import utcnow
from massmailer.services import build_services

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)


def job(created_ago: timedelta, **columns) -> int:
    now = utcnow()
    row = EmailJob(
        recipient="a@example.com", subject="s", body="b", sender="s@example.com",
        status=columns.pop("status", "PENDING"), message_id=f"<{id(columns)}.{now.timestamp()}@t>",
        created_at=now - created_ago, updated_at=now - created_ago, **columns,
    )  # fmt: skip
    db.session.add(row)
    db.session.commit()
    return row.job_id


def test_the_default_max_age_is_three_days_and_a_bad_value_names_the_variable(env):
    assert load_settings(env).max_age_seconds == 3 * 86_400
    assert load_settings({**env, "MASSMAILER_MAX_AGE_SECONDS": "3600"}).max_age_seconds == 3600
    with pytest.raises(ConfigError, match="MASSMAILER_MAX_AGE_SECONDS"):
        load_settings({**env, "MASSMAILER_MAX_AGE_SECONDS": "soon"})


def test_a_sweep_fails_jobs_older_than_the_max_age_and_only_those(app, settings):
    now = utcnow()
    old = 4 * DAY
    waiting_in_queue = job(old, enqueued_at=now - old)
    # Waiting for capacity (breakers open) without a charged attempt still ages the job.
    waiting_uncharged = job(old, next_attempt_at=now + timedelta(minutes=5), enqueued_at=now)
    never_published = job(old)
    lapsed_claim = job(old, claim_token="dead", lease_until=now - DAY)
    young = job(DAY, enqueued_at=now - DAY)
    scheduled_recently_due = job(old, send_at=now - DAY)  # its age counts from send_at
    being_sent = job(old, claim_token="live", lease_until=now + timedelta(minutes=1))
    sent = job(old, status="SENT")
    services = build_services(settings, app.extensions["massmailer.publisher"])
    try:
        sweeper.sweep(db.session, services)
    finally:
        services.pools.close_all()

    db.session.expire_all()
    rows = {j.job_id: (j.status, j.last_error) for j in db.session.scalars(select(EmailJob))}
    expired = ("FAILED", "expired")
    assert rows[waiting_in_queue] == rows[waiting_uncharged] == expired
    assert rows[never_published] == rows[lapsed_claim] == expired
    assert rows[young][0] == rows[scheduled_recently_due][0] == "PENDING"
    assert rows[being_sent] == ("PENDING", None)
    assert rows[sent] == ("SENT", None)
