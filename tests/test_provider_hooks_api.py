"""Provider webhooks through the Flask test client on real PostgreSQL and Redis: a verified
event changes the job and the suppression list as the bounces code does; a forged, stale or
replayed post answers 4xx and changes nothing; the same event twice changes nothing twice."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update

from massmailer.api.provider_hooks import hook_services
from massmailer.bounces.inbox import apply_pending
from massmailer.extensions import db
from massmailer.models import EmailEvent, EmailJob, InboundReport, Suppression
from massmailer.models.types import utcnow
from tests import provider_hooks_signing as signing

pytestmark = pytest.mark.integration
NOW = 1_764_590_000


@pytest.fixture
def env(env):
    return {
        **env,
        "MASSMAILER_SNS_TOPIC_ARNS": signing.TOPIC,
        "MASSMAILER_SENDGRID_WEBHOOK_PUBLIC_KEY": signing.sendgrid_public_key(),
        "MASSMAILER_MAILGUN_SIGNING_KEY": signing.MAILGUN_KEY,
    }


@pytest.fixture
def fetched(app) -> list[str]:
    """Every URL the app fetched; certificates come from the test key, nothing leaves."""
    urls: list[str] = []

    def fetch(url: str) -> bytes:
        urls.append(url)
        return signing.sns_cert_pem() if url == signing.CERT_URL else b"<ConfirmSubscription/>"

    services = hook_services()
    services.fetch = fetch
    services.clock = lambda: NOW
    services.verifiers.clear()
    return urls


def sent_job(recipient: str, queue_id: str | None = None) -> EmailJob:
    job = EmailJob(
        recipient=recipient,
        subject="December offers",
        body="Our offers.",
        sender="news@massmailer.test",
        message_id=f"<{uuid.uuid4().hex}@massmailer.test>",
        provider_queue_id=queue_id,
        status="SENT",
    )
    db.session.add(job)
    db.session.commit()
    return job


def state_of(job: EmailJob) -> tuple[str, str | None, str | None]:
    db.session.expire_all()
    row = db.session.get(EmailJob, job.job_id)
    suppression = db.session.get(Suppression, job.recipient)
    return row.status, row.last_error, suppression.reason if suppression else None


def events_of(job: EmailJob) -> list[str]:
    rows = db.session.scalars(select(EmailEvent.type).where(EmailEvent.job_id == job.job_id))
    return [t for t in rows if t != "accepted"]


def report_count() -> int:
    return len(db.session.scalars(select(InboundReport.id)).all())


def post_sns(client, message: dict):
    body = json.dumps(message)
    return client.post("/v1/inbound/ses", data=body, content_type="text/plain; charset=UTF-8")


# Amazon SES through SNS ----------------------------------------------------------------------


def test_an_ses_permanent_bounce_fails_the_job_and_suppresses_once(client, fetched):
    job = sent_job("gone@example.org", "0102019abc-ses-1")
    ses = signing.ses_bounce(
        "0102019abc-ses-1", "gone@example.org", "Permanent", "General", "5.1.1"
    )
    note = signing.sns_signed(signing.sns_notification(ses), "2")

    first = post_sns(client, note)
    again = post_sns(client, note)

    assert first.status_code == 200
    assert first.get_json()["events"][0]["state"] == "applied"
    assert again.get_json()["events"][0]["state"] == "duplicate"
    status, error, reason = state_of(job)
    assert (status, reason) == ("FAILED", "hard_bounce")
    assert error.startswith("bounced:")
    assert events_of(job) == ["bounced"]
    assert fetched == [signing.CERT_URL]  # the certificate once, cached for the second post


def test_an_ses_policy_bounce_fails_without_suppressing(client, fetched):
    job = sent_job("blocked@example.org", "0102019abc-ses-2")
    ses = signing.ses_bounce(
        "0102019abc-ses-2", "blocked@example.org", "Permanent", "ContentRejected", "5.7.1"
    )

    post_sns(client, signing.sns_signed(signing.sns_notification(ses)))

    assert state_of(job)[0] == "FAILED" and state_of(job)[2] is None


def test_an_ses_transient_bounce_is_an_event_only(client, fetched):
    job = sent_job("full@example.org", "0102019abc-ses-3")
    ses = signing.ses_bounce(
        "0102019abc-ses-3", "full@example.org", "Transient", "MailboxFull", "4.2.2"
    )

    post_sns(client, signing.sns_signed(signing.sns_notification(ses)))

    assert state_of(job) == ("SENT", None, None)
    assert events_of(job) == ["deferred"]


def test_an_ses_complaint_keeps_the_job_sent_and_suppresses(client, fetched):
    job = sent_job("angry@example.org", "0102019abc-ses-4")
    ses = signing.ses_complaint("0102019abc-ses-4", "angry@example.org")

    post_sns(client, signing.sns_signed(signing.sns_notification(ses)))

    assert state_of(job) == ("SENT", None, "complaint")
    assert events_of(job) == ["complained"]


def test_a_forged_sns_notification_changes_nothing(client, fetched):
    job = sent_job("victim@example.org", "0102019abc-ses-5")
    ses = signing.ses_bounce(
        "0102019abc-ses-5", "victim@example.org", "Permanent", "General", "5.1.1"
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = signing.sns_signed(signing.sns_notification(ses), key=other)
    good = signing.sns_signed(signing.sns_notification(ses))
    tampered = {**good, "Message": good["Message"].replace("victim", "victim2")}

    assert post_sns(client, forged).status_code == 403
    assert post_sns(client, tampered).status_code == 403
    assert (
        post_sns(client, {**good, "TopicArn": "arn:aws:sns:eu-west-1:999999999999:x"}).status_code
        == 403
    )
    assert post_sns(client, json.loads(good["Message"])).status_code == 400  # raw delivery
    assert state_of(job) == ("SENT", None, None)
    assert report_count() == 0


def test_a_bounce_for_a_job_still_pending_is_applied_once_the_job_is_final(client, fetched):
    job = sent_job("slow@example.org", "0102019abc-ses-7")
    db.session.execute(
        update(EmailJob).where(EmailJob.job_id == job.job_id).values(status="PENDING")
    )
    db.session.commit()
    ses = signing.ses_bounce(
        "0102019abc-ses-7", "slow@example.org", "Permanent", "NoEmail", "5.1.1"
    )

    response = post_sns(client, signing.sns_signed(signing.sns_notification(ses)))
    assert response.get_json()["events"][0]["state"] == "pending"
    db.session.execute(update(EmailJob).where(EmailJob.job_id == job.job_id).values(status="SENT"))
    db.session.commit()
    apply_pending(db.session, utcnow())

    assert state_of(job)[0::2] == ("FAILED", "hard_bounce")


def test_a_bounce_for_another_recipient_of_the_message_is_kept_unmatched(client, fetched):
    job = sent_job("someone@example.org", "0102019abc-ses-6")
    ses = signing.ses_bounce(
        "0102019abc-ses-6", "other@example.org", "Permanent", "General", "5.1.1"
    )

    response = post_sns(client, signing.sns_signed(signing.sns_notification(ses)))

    assert response.get_json()["events"][0]["state"] == "unmatched"
    assert state_of(job) == ("SENT", None, None)


def test_a_subscription_confirmation_for_our_topic_is_confirmed(client, fetched):
    confirmation = signing.sns_signed(signing.sns_subscription(), "2")

    response = post_sns(client, confirmation)

    assert (response.status_code, response.get_json()["confirmed"]) == (200, True)
    assert fetched == [signing.CERT_URL, confirmation["SubscribeURL"]]


def test_a_subscription_confirmation_for_another_topic_fetches_nothing(client, fetched):
    other = "arn:aws:sns:eu-west-1:999999999999:not-ours"
    confirmation = signing.sns_signed(signing.sns_subscription(topic=other))

    assert post_sns(client, confirmation).status_code == 403
    assert fetched == []


def test_a_subscribe_url_off_the_topics_host_is_not_visited(client, fetched):
    confirmation = signing.sns_signed(signing.sns_subscription(host="evil.example"))

    assert post_sns(client, confirmation).status_code == 403
    assert fetched == [signing.CERT_URL]


# SendGrid ------------------------------------------------------------------------------------


def post_sendgrid(client, events: list[dict], timestamp: int = NOW, body: bytes | None = None):
    body = body or json.dumps(events).encode()
    headers = signing.sendgrid_headers(body, timestamp)
    return client.post(
        "/v1/inbound/sendgrid", data=body, headers=headers, content_type="application/json"
    ), (body, headers)


def sendgrid_event(job: EmailJob, event: str, event_id: str, **extra) -> dict:
    return {
        "email": job.recipient,
        "event": event,
        "sg_event_id": event_id,
        "sg_message_id": f"{job.provider_queue_id}.filterdrecv-5645d9c87f-6r6jf-1-5F5F-10.0",
        "timestamp": NOW - 5,
        **extra,
    }


def test_sendgrid_bounce_and_spamreport_take_effect_once(client, fetched):
    gone = sent_job("sg-gone@example.org", "LRzXl_NHStOGhQ4kofSm_A")
    angry = sent_job("sg-angry@example.org", None)
    events = [
        sendgrid_event(gone, "bounce", "ev-1", type="bounce", status="5.1.1", reason="no user"),
        {**sendgrid_event(angry, "spamreport", "ev-2"), "smtp-id": angry.message_id},
        sendgrid_event(gone, "delivered", "ev-3"),
    ]

    response, _ = post_sendgrid(client, events)
    again, _ = post_sendgrid(client, events, timestamp=NOW + 1)  # SendGrid's retry, re-signed

    assert [e["state"] for e in response.get_json()["events"]] == ["applied", "applied"]
    assert [e["state"] for e in again.get_json()["events"]] == ["duplicate", "duplicate"]
    assert state_of(gone)[0::2] == ("FAILED", "hard_bounce")
    assert state_of(angry) == ("SENT", None, "complaint")


def test_sendgrid_forged_stale_and_replayed_posts_change_nothing(client, fetched):
    job = sent_job("sg-victim@example.org", "QueueId_victim")
    events = [sendgrid_event(job, "bounce", "ev-9", type="bounce", status="5.1.1")]
    body = json.dumps(events).encode()
    forged = body.replace(b"ev-9", b"ev-8")

    _, (signed, headers) = post_sendgrid(client, [], body=json.dumps([]).encode())
    tampered = client.post(
        "/v1/inbound/sendgrid", data=forged, headers=signing.sendgrid_headers(body, NOW)
    )
    stale, _ = post_sendgrid(client, events, timestamp=NOW - 400)
    replay = client.post("/v1/inbound/sendgrid", data=signed, headers=headers)
    unsigned = client.post("/v1/inbound/sendgrid", data=body)

    assert (tampered.status_code, stale.status_code) == (403, 403)
    assert (replay.status_code, unsigned.status_code) == (409, 401)
    assert state_of(job) == ("SENT", None, None)
    assert report_count() == 0


# Mailgun -------------------------------------------------------------------------------------


def mailgun_event(job: EmailJob, event: str, event_id: str, **extra) -> dict:
    return {
        "id": event_id,
        "event": event,
        "recipient": job.recipient,
        "message": {"headers": {"message-id": job.message_id.strip("<>")}},
        "timestamp": NOW - 5,
        **extra,
    }


def post_mailgun(client, event: dict, token: str, timestamp: int = NOW, key=signing.MAILGUN_KEY):
    return client.post(
        "/v1/inbound/mailgun", json=signing.mailgun_post(event, timestamp, token, key)
    )


def test_mailgun_failed_and_complained_take_effect_once(client, fetched):
    gone = sent_job("mg-gone@example.org")
    angry = sent_job("mg-angry@example.org")
    failed = mailgun_event(
        gone, "failed", "mg-1", severity="permanent",
        **{"delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"}},
    )  # fmt: skip

    first = post_mailgun(client, failed, "t" * 50)
    again = post_mailgun(client, failed, "u" * 50)  # a new token: a retry Mailgun signed anew
    complained = post_mailgun(client, mailgun_event(angry, "complained", "mg-2"), "v" * 50)

    assert first.get_json()["events"][0]["state"] == "applied"
    assert again.get_json()["events"][0]["state"] == "duplicate"
    assert complained.get_json()["events"][0]["state"] == "applied"
    assert state_of(gone)[0::2] == ("FAILED", "hard_bounce")
    assert state_of(angry) == ("SENT", None, "complaint")


def test_mailgun_temporary_failure_is_an_event_only(client, fetched):
    job = sent_job("mg-later@example.org")
    event = mailgun_event(job, "failed", "mg-3", severity="temporary")

    post_mailgun(client, event, "w" * 50)

    assert state_of(job) == ("SENT", None, None)
    assert events_of(job) == ["deferred"]


def test_mailgun_forged_stale_and_replayed_posts_change_nothing(client, fetched):
    job = sent_job("mg-victim@example.org")
    event = mailgun_event(job, "failed", "mg-4", severity="permanent", reason="suppress-bounce")
    harmless = mailgun_event(job, "delivered", "mg-5")

    assert post_mailgun(client, harmless, "x" * 50).status_code == 200  # the token is now used
    replayed = post_mailgun(client, event, "x" * 50)  # its signature, another event
    wrong_key = post_mailgun(client, event, "y" * 50, key="key-not-ours-" + "z" * 20)
    stale = post_mailgun(client, event, "z" * 50, timestamp=NOW - 400)

    assert (replayed.status_code, wrong_key.status_code, stale.status_code) == (409, 403, 403)
    assert state_of(job) == ("SENT", None, None)
    assert report_count() == 0


def test_unconfigured_providers_refuse_everything(client, app, fetched):
    settings = app.extensions["massmailer.settings"]
    object.__setattr__(settings, "mailgun_signing_key", None)
    try:
        response = post_mailgun(client, {"event": "failed"}, "q" * 50)
    finally:
        object.__setattr__(settings, "mailgun_signing_key", signing.MAILGUN_KEY)

    assert response.status_code == 403
    assert response.get_json()["error"]["message"] == "Mailgun webhooks are not configured"
