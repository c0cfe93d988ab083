"""Every state change of a job is an event, written with the change, and the API shows them."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, text, update

from massmailer import jobstore
from massmailer.delivery.outcomes import OutcomeRecorder
from massmailer.extensions import db
from massmailer.models import EmailEvent, EmailJob
from massmailer.models.types import utcnow
from massmailer.services import build_services
from massmailer.testing.smtp_server import Rule
from massmailer.unsubscribe import UnsubscribeLinks
from tests import infra

pytestmark = pytest.mark.integration

TOKEN = "e" * 32


def post(client, auth, to="reader@example.com") -> int:
    payload = {"to": to, "subject": "Hello", "text": "Hi"}
    response = client.post("/v1/emails", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def deliver(app, settings, job_ids):
    """Run one chunk through the delivery service in this process (what a send task does)."""
    services = build_services(settings, app.extensions["massmailer.publisher"])
    try:
        return services.delivery.deliver(db.session, job_ids, budget_seconds=30)
    finally:
        services.pools.close_all()


def events_of(job_id: int) -> list[EmailEvent]:
    db.session.expire_all()
    return db.session.scalars(
        select(EmailEvent).where(EmailEvent.job_id == job_id).order_by(EmailEvent.id)
    ).all()


def types_of(job_id: int) -> list[str]:
    return [e.type for e in events_of(job_id)]


def held(job_id: int, token: str = TOKEN) -> None:
    """Claim the job under token, as a live worker would."""
    db.session.execute(
        update(EmailJob)
        .where(EmailJob.job_id == job_id)
        .values(claim_token=token, lease_until=utcnow() + timedelta(minutes=1))
    )
    db.session.commit()


# --- through the delivery path, against the test SMTP server -------------------------------


def test_a_delivered_email_shows_accepted_then_sent_in_the_api(app, client, auth, settings):
    job_id = post(client, auth)

    deliver(app, settings, [job_id])

    events = client.get(f"/v1/emails/{job_id}", headers=auth).get_json()["events"]
    assert [e["type"] for e in events] == ["accepted", "sent"]
    sent = events[1]
    assert (sent["provider"], sent["smtp_code"]) == ("primary", 250)
    assert sent["detail"].startswith("2.0.0 Ok: queued as ")
    assert sent["at"].endswith("+00:00") and events[0]["at"] <= sent["at"]


def test_a_temporary_refusal_is_a_deferred_event_with_the_error(
    app, client, auth, settings, smtp_server
):
    smtp_server.set_rules([Rule("RCPT", 451)])
    job_id = post(client, auth)

    deliver(app, settings, [job_id])

    accepted, deferred = events_of(job_id)
    assert (accepted.type, deferred.type) == ("accepted", "deferred")
    assert (deferred.provider, deferred.smtp_code, deferred.enhanced_code) == (
        "primary",
        451,
        "4.3.0",
    )
    assert deferred.detail == db.session.get(EmailJob, job_id).last_error


def test_a_hard_bounce_is_a_failed_event(app, client, auth, settings, smtp_server):
    smtp_server.set_rules([Rule("RCPT", 550)])
    job_id = post(client, auth)

    deliver(app, settings, [job_id])

    failed = events_of(job_id)[-1]
    assert (failed.type, failed.smtp_code, failed.enhanced_code) == ("failed", 550, "5.1.1")


def test_a_suppressed_recipient_is_a_failed_suppressed_event(app, client, auth, settings):
    response = client.post("/v1/suppressions", json={"email": "gone@example.com"}, headers=auth)
    assert response.status_code in (200, 201), response.get_json()
    job_id = post(client, auth, to="gone@example.com")

    deliver(app, settings, [job_id])

    failed = events_of(job_id)[-1]
    assert (failed.type, failed.detail, failed.smtp_code) == ("failed", "suppressed", None)


# --- a change that did not happen logs nothing ----------------------------------------------


def test_a_flush_under_a_stale_claim_token_logs_nothing(app, client, auth):
    job_id = post(client, auth)
    held(job_id, token="n" * 32)  # another worker holds it now
    recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
    recorder.failed(job_id, "primary", "too late", charged=1)

    recorder.flush()

    assert types_of(job_id) == ["accepted"]
    assert db.session.get(EmailJob, job_id).status == "PENDING"


def test_a_release_logs_nothing(app, client, auth):
    job_id = post(client, auth)
    held(job_id)

    jobstore.release(db.session, TOKEN, [job_id])
    db.session.commit()

    assert types_of(job_id) == ["accepted"]


def test_a_flush_logs_events_only_for_the_rows_it_changed(app, client, auth):
    mine, taken = post(client, auth, to="a@example.com"), post(client, auth, to="b@example.com")
    held(mine)
    held(taken, token="n" * 32)
    recorder = OutcomeRecorder(db.session, TOKEN, utcnow)
    recorder.attempt(mine, 1, "primary", "transient", smtp_code=421, enhanced="4.4.2")
    recorder.retry(
        jobstore.ClaimedJob(
            mine, "a@example.com", None, "s@x", None, "s", "b", None, None, 0, 0, "<m>", None,
            0, "transactional",
        ),
        error="421 try later",
        charged=1,
        tier_seconds=10,
        failed_provider="primary",
    )  # fmt: skip
    recorder.failed(taken, "primary", "550 no", charged=1)

    recorder.flush()

    assert [(e.type, e.smtp_code, e.detail) for e in events_of(mine)][1:] == [
        ("deferred", 421, "421 try later")
    ]
    assert types_of(taken) == ["accepted"]


# --- cancel, expiry, unsubscribe -------------------------------------------------------------


def test_cancel_logs_one_cancelled_event_and_a_refused_cancel_none(app, client, auth):
    job_id = post(client, auth)

    first = client.post(f"/v1/emails/{job_id}/cancel", headers=auth)
    second = client.post(f"/v1/emails/{job_id}/cancel", headers=auth)

    assert (first.status_code, second.status_code) == (200, 409)
    assert types_of(job_id) == ["accepted", "cancelled"]


def test_cancelling_a_batch_logs_cancelled_on_each_waiting_job(app, client, auth):
    payload = {
        "template": {"subject": "Hi", "text": "Hello"},
        "recipients": [{"to": f"r{i}@example.com"} for i in range(3)],
    }
    batch = client.post("/v1/batches", json=payload, headers=auth).get_json()["id"]

    response = client.post(f"/v1/batches/{batch}/cancel", headers=auth)

    assert response.status_code == 200, response.get_json()
    ids = db.session.scalars(select(EmailJob.job_id).where(EmailJob.batch_id == batch)).all()
    assert len(ids) == 3
    for job_id in ids:
        assert [(e.type, e.detail) for e in events_of(job_id)] == [
            ("accepted", None),
            ("cancelled", "batch cancelled"),
        ]


def batch_cancelled_behind_its_jobs(client, auth) -> list[int]:
    """A batch marked cancelled while its jobs stayed PENDING (as if claimed during the cancel)."""
    payload = {
        "template": {"subject": "Hi", "text": "Hello"},
        "recipients": [{"to": f"r{i}@example.com"} for i in range(2)],
    }
    batch = client.post("/v1/batches", json=payload, headers=auth).get_json()["id"]
    db.session.execute(text("UPDATE batches SET cancelled_at = now() WHERE id = :b"), {"b": batch})
    db.session.execute(
        text("UPDATE email_jobs SET enqueued_at = NULL, updated_at = now() - interval '1 hour'")
    )
    db.session.commit()
    return list(db.session.scalars(select(EmailJob.job_id).where(EmailJob.batch_id == batch)))


def test_a_claim_that_finds_the_batch_cancelled_logs_cancelled(app, client, auth):
    ids = batch_cancelled_behind_its_jobs(client, auth)

    assert jobstore.claim(db.session, ids, TOKEN, lease_seconds=30) == []

    assert [types_of(i) for i in ids] == [["accepted", "cancelled"]] * 2


def test_a_sweep_that_finds_the_batch_cancelled_logs_cancelled(app, client, auth):
    ids = batch_cancelled_behind_its_jobs(client, auth)

    assert jobstore.take_lost(db.session, timedelta(seconds=60), 100) == []

    assert [types_of(i) for i in ids] == [["accepted", "cancelled"]] * 2


def test_an_expired_job_logs_failed_expired(app, client, auth):
    job_id = post(client, auth)

    expired = jobstore.expire_overdue(db.session, utcnow() + timedelta(days=4), timedelta(days=3))

    assert expired == 1
    assert [(e.type, e.detail) for e in events_of(job_id)][-1] == ("failed", "expired")


def test_an_unsubscribe_logs_unsubscribed_on_the_job_of_its_link_once(app, client, auth, settings):
    job_id = post(client, auth, to="Ann@example.com")
    url = UnsubscribeLinks(settings.secret_key, settings.public_url).url("ann@example.com", job_id)

    for _ in range(2):
        response = client.post(urlsplit(url).path, data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200

    assert types_of(job_id) == ["accepted", "unsubscribed"]


def test_an_unsubscribe_naming_another_address_or_no_job_logs_nothing(app, client, settings):
    links = UnsubscribeLinks(settings.secret_key, settings.public_url)
    for address, job_id in (("someone@example.com", 1), ("ann@example.com", None)):
        response = client.post(urlsplit(links.url(address, job_id)).path, data="x")
        assert response.status_code == 200
    assert db.session.scalar(select(EmailEvent.id)) is None


# --- the view and retention ------------------------------------------------------------------


def test_the_view_shows_the_last_100_events_oldest_first(app, client, auth):
    job_id = post(client, auth)
    db.session.execute(
        text(
            "INSERT INTO email_events (job_id, type, at, detail)"
            " SELECT :j, 'deferred', now() + g * interval '1 second', 'try ' || g"
            " FROM generate_series(1, 120) AS g"
        ),
        {"j": job_id},
    )
    db.session.commit()

    events = client.get(f"/v1/emails/{job_id}", headers=auth).get_json()["events"]

    assert len(events) == 100
    assert [e["detail"] for e in (events[0], events[-1])] == ["try 21", "try 120"]


def test_housekeeping_deletes_events_past_retention_and_keeps_the_rest(app, client, auth):
    old, recent = post(client, auth, to="a@example.com"), post(client, auth, to="b@example.com")
    db.session.execute(
        update(EmailEvent).where(EmailEvent.job_id == old).values(at=utcnow() - timedelta(days=31))
    )
    db.session.commit()

    jobstore.housekeep(db.session, utcnow(), timedelta(days=3), event_retention=timedelta(days=30))

    assert (types_of(old), types_of(recent)) == ([], ["accepted"])


def test_purging_a_final_job_deletes_its_events(app, client, auth):
    job_id = post(client, auth)
    client.post(f"/v1/emails/{job_id}/cancel", headers=auth)

    assert jobstore.purge_final(db.session, utcnow() + timedelta(seconds=1)) == 1

    assert events_of(job_id) == []


def test_the_retention_setting_is_parsed_strictly(env):
    from massmailer.config import ConfigError, load_settings

    assert load_settings(env).event_retention_days == 30
    assert load_settings({**env, "MASSMAILER_EVENT_RETENTION_DAYS": "7"}).event_retention_days == 7
    with pytest.raises(ConfigError, match="MASSMAILER_EVENT_RETENTION_DAYS"):
        load_settings({**env, "MASSMAILER_EVENT_RETENTION_DAYS": "0"})


# --- through a real worker process ------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_process_logs_sent_in_the_same_flush(client, auth, env, smtp_server):
    job_id = post(client, auth)

    with infra.running_worker(env):
        infra.wait_until(lambda: "sent" in types_of(job_id), 30, message="a sent event")

    assert types_of(job_id) == ["accepted", "sent"]
    assert db.session.get(EmailJob, job_id).status == "SENT"
