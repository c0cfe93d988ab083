"""The inbox against real PostgreSQL: effects, dedupe, forgery, claimed jobs, the HTTP endpoint."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from massmailer.bounces.inbox import Inbox, apply_pending, prune
from massmailer.bounces.verp import VerpSigner
from massmailer.extensions import db
from massmailer.models import EmailEvent, EmailJob, InboundReport, Suppression
from massmailer.models.types import utcnow
from massmailer.unsubscribe import UnsubscribeLinks
from tests.bounce_fixtures import fixture

pytestmark = pytest.mark.integration
TOKEN = "inbound-token-" + "t" * 32


@pytest.fixture
def env(env):
    return {
        **env,
        "MASSMAILER_INBOUND_TOKEN": TOKEN,
        "MASSMAILER_FEEDBACK_ADDRESS": "fbl@massmailer.test",
        "MASSMAILER_UNSUBSCRIBE_MAILTO": "unsubscribe@massmailer.test",
    }


def sent_job(recipient: str, **values) -> EmailJob:
    job = EmailJob(
        recipient=recipient,
        subject="December offers",
        body="Our offers.",
        sender="news@massmailer.test",
        message_id=f"<{recipient.split('@')[0]}.1@massmailer.test>",
        status="SENT",
        **values,
    )
    db.session.add(job)
    db.session.commit()
    return job


def verp(settings, job_id: int) -> str:
    return f"bounces+{job_id}-{VerpSigner(settings.secret_key).mac(job_id)}@massmailer.test"


def receive(settings, raw: bytes, to: str | None):
    return Inbox(settings).receive(db.session, raw, to, "smtp", utcnow())


def events_of(job_id: int) -> list[tuple[str, str | None]]:
    rows = db.session.scalars(
        select(EmailEvent).where(EmailEvent.job_id == job_id).order_by(EmailEvent.id)
    )
    return [(e.type, e.enhanced_code) for e in rows if e.type != "accepted"]


def job_and_suppression(job_id: int, address: str):
    db.session.expire_all()
    job = db.session.get(EmailJob, job_id)
    suppression = db.session.get(Suppression, address)
    return job.status, job.last_error, suppression.reason if suppression else None


def test_a_hard_bounce_fails_the_job_and_suppresses_once(app, settings):
    job = sent_job("gone@example.org")
    raw = fixture("postfix_hard_5.1.1.eml", verp=verp(settings, job.job_id), rcpt=job.recipient)

    first = receive(settings, raw, verp(settings, job.job_id))
    again = receive(settings, raw, verp(settings, job.job_id))

    assert (first.state, first.job_id, first.kind) == ("applied", job.job_id, "hard_bounce")
    assert again.state == "duplicate"
    status, error, reason = job_and_suppression(job.job_id, "gone@example.org")
    assert (status, reason) == ("FAILED", "hard_bounce")
    assert error.startswith("bounced: 5.1.1 550 5.1.1")
    assert events_of(job.job_id) == [("bounced", "5.1.1")]  # once, with the FAILED change
    assert db.session.scalar(select(db.func.count()).select_from(InboundReport)) == 1


def test_a_policy_bounce_fails_the_job_but_keeps_the_address(app, settings):
    job = sent_job("blocked@example.org")
    raw = fixture("microsoft_policy_5.7.1.eml", verp=verp(settings, job.job_id))

    assert receive(settings, raw, verp(settings, job.job_id)).kind == "bounce"

    status, error, reason = job_and_suppression(job.job_id, "blocked@example.org")
    assert (status, reason) == ("FAILED", None)
    assert error.startswith("bounced: 5.7.1")


def test_a_complaint_keeps_the_job_sent_and_suppresses(app, settings):
    job = sent_job("angry@example.org")
    raw = fixture("arf_abuse.eml", verp=verp(settings, job.job_id), rcpt=job.recipient)

    assert receive(settings, raw, "fbl@massmailer.test").state == "applied"

    assert job_and_suppression(job.job_id, "angry@example.org") == ("SENT", None, "complaint")
    assert events_of(job.job_id) == [("complained", None)]


def test_a_delay_changes_nothing(app, settings):
    job = sent_job("slow@example.org")
    raw = fixture("postfix_delayed_4.4.1.eml", verp=verp(settings, job.job_id))

    assert receive(settings, raw, verp(settings, job.job_id)).kind == "delayed"

    assert job_and_suppression(job.job_id, "slow@example.org") == ("SENT", None, None)
    assert events_of(job.job_id) == [("deferred", "4.4.1")]


def test_a_forged_verp_changes_nothing_even_with_a_real_message_id(app, settings):
    job = sent_job("victim@example.org")
    forged = f"bounces+{job.job_id}-aaaaaaaaaa@massmailer.test"
    raw = fixture("postfix_hard_5.1.1.eml", verp=forged, message_id=job.message_id)

    result = receive(settings, raw, forged)

    assert (result.state, result.job_id) == ("forged", None)
    assert job_and_suppression(job.job_id, "victim@example.org") == ("SENT", None, None)
    assert events_of(job.job_id) == []


def test_the_returned_message_id_matches_when_the_verp_is_lost(app, settings):
    job = sent_job("gone2@example.org")
    raw = fixture("exim_hard_5.1.1.eml", verp="bounces@massmailer.test", message_id=job.message_id)

    assert receive(settings, raw, "bounces@massmailer.test").job_id == job.job_id

    assert job_and_suppression(job.job_id, "gone2@example.org")[2] == "hard_bounce"


def test_an_ses_message_id_matches_the_stored_provider_id(app, settings):
    job = sent_job("ses@example.org", provider_queue_id="0100018c2f3e4d5a-1b2c3d4e-aaaa-000000")
    raw = fixture(
        "gmail_hard_5.1.1.eml",
        verp="bounces@massmailer.test",
        message_id="<0100018c2f3e4d5a-1b2c3d4e-aaaa-000000@email.amazonses.com>",
    )

    assert receive(settings, raw, "bounces@massmailer.test").job_id == job.job_id


def test_an_unmatched_or_unreadable_report_is_kept_and_changes_nothing(app, settings):
    raw = fixture("postfix_hard_5.1.1.eml", verp="bounces@massmailer.test")
    unmatched = receive(settings, raw, "bounces@massmailer.test")
    unreadable = receive(settings, b"Subject: hello\r\n\r\nnot a bounce\r\n", None)

    assert (unmatched.state, unreadable.state) == ("unmatched", "unparsable")
    assert db.session.scalar(select(db.func.count()).select_from(Suppression)) == 0


def test_a_report_for_a_claimed_job_waits_for_the_claim_to_end(app, settings):
    job = sent_job("later@example.org")
    db.session.execute(
        text("UPDATE email_jobs SET status = 'PENDING', claim_token = 'tok', "
             "lease_until = now() + interval '1 minute' WHERE job_id = :id"),
        {"id": job.job_id},
    )  # fmt: skip
    db.session.commit()
    raw = fixture("postfix_hard_5.1.1.eml", verp=verp(settings, job.job_id))

    assert receive(settings, raw, verp(settings, job.job_id)).state == "pending"
    assert apply_pending(db.session, utcnow()) == 0  # still claimed
    assert events_of(job.job_id) == []
    db.session.execute(
        text("UPDATE email_jobs SET status = 'SENT', claim_token = NULL WHERE job_id = :id"),
        {"id": job.job_id},
    )
    db.session.commit()
    assert apply_pending(db.session, utcnow()) == 1

    assert job_and_suppression(job.job_id, "later@example.org")[::2] == ("FAILED", "hard_bounce")
    assert events_of(job.job_id) == [("bounced", "5.1.1")]


def test_a_mailto_unsubscribe_suppresses_the_address_its_token_names(app, settings):
    job = sent_job("reader@example.org")
    token = UnsubscribeLinks(settings.secret_key, settings.public_url).token(
        job.recipient, job.job_id
    )
    raw = f"From: reader@example.org\r\nSubject: unsubscribe {token}\r\n\r\n".encode()
    forged = b"From: x@example.org\r\nSubject: unsubscribe bm90LWEtdG9rZW4\r\n\r\n"

    assert receive(settings, raw, "unsubscribe@massmailer.test").state == "applied"
    assert receive(settings, forged, "unsubscribe@massmailer.test").state == "forged"

    assert job_and_suppression(job.job_id, "reader@example.org") == ("SENT", None, "unsubscribe")
    assert events_of(job.job_id) == [("unsubscribed", None)]


def test_retention_drops_raw_bytes_and_unmatched_reports(app, settings):
    job = sent_job("old@example.org")
    receive(settings, fixture("postfix_delayed_4.4.1.eml", verp=verp(settings, job.job_id)), None)
    unmatched = fixture("postfix_hard_5.1.1.eml", verp="bounces@massmailer.test")
    receive(settings, unmatched, "bounces@massmailer.test")

    prune(db.session, utcnow() + timedelta(days=31), timedelta(days=30))

    rows = db.session.execute(select(InboundReport.job_id, InboundReport.raw)).all()
    assert [(r.job_id, r.raw) for r in rows] == [(job.job_id, None)]


def test_the_inbound_endpoint_needs_its_token(client, auth):
    raw = fixture("postfix_hard_5.1.1.eml")

    assert client.post("/v1/inbound/raw", data=raw).status_code == 401
    assert client.post("/v1/inbound/raw", data=raw, headers=auth).status_code == 401  # an API key
    wrong = {"Authorization": "Bearer " + "x" * 46}
    assert client.post("/v1/inbound/raw", data=raw, headers=wrong).status_code == 401
    assert client.post(f"/v1/inbound/raw?token={TOKEN}", data=raw).status_code == 401


def test_the_inbound_endpoint_applies_a_report_and_get_shows_the_bounce(client, auth, settings):
    response = client.post(
        "/v1/emails", json={"to": "gone3@example.org", "subject": "s", "text": "t"}, headers=auth
    )
    job_id = response.get_json()["id"]
    db.session.execute(
        text("UPDATE email_jobs SET status = 'SENT' WHERE job_id = :id"), {"id": job_id}
    )
    db.session.commit()
    raw = fixture("gmail_hard_5.1.1.eml", verp=verp(settings, job_id))
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    posted = client.post(f"/v1/inbound/raw?to={verp(settings, job_id)}", data=raw, headers=bearer)
    again = client.post("/v1/inbound/raw", data=raw, headers=bearer)

    assert (posted.status_code, posted.get_json()["state"]) == (202, "applied")
    assert (again.status_code, again.get_json()["state"]) == (200, "duplicate")
    email = client.get(f"/v1/emails/{job_id}", headers=auth).get_json()
    assert email["status"] == "FAILED"
    assert email["bounce"]["type"] == "hard_bounce"
    assert email["bounce"]["status"] == "5.1.1"
    assert "does not exist" in email["bounce"]["diagnostic"]
    assert email["bounce"]["at"].endswith("+00:00")


def test_a_sendgrid_inbound_parse_post_is_read(client, settings):
    job = sent_job("sg@example.org")
    raw = fixture("arf_abuse.eml", verp=verp(settings, job.job_id), rcpt=job.recipient)
    form = {"email": raw.decode(), "envelope": '{"to": ["fbl@massmailer.test"], "from": "x@y"}'}

    basic = {"Authorization": "Basic " + base64.b64encode(f"inbound:{TOKEN}".encode()).decode()}

    response = client.post("/v1/inbound/raw", data=form, headers=basic)

    assert response.get_json()["state"] == "applied"
    assert job_and_suppression(job.job_id, "sg@example.org")[2] == "complaint"
