"""The intake API against real PostgreSQL and RabbitMQ (no worker runs here)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from massmailer import apikeys
from massmailer.extensions import db
from massmailer.models import EmailJob
from massmailer.queues import SEND_QUEUE
from tests import infra

pytestmark = pytest.mark.integration

GOOD = {"to": "Ada <ada@example.com>", "subject": "Hello", "text": "Hi Ada"}


def post(client, auth, payload, **kwargs):
    return client.post("/v1/emails", json=payload, headers=auth, **kwargs)


def test_accepted_email_is_committed_and_queued(client, auth, broker_url):
    response = post(client, auth, {**GOOD, "priority": 7, "html": "<p>Hi</p>"})

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "PENDING"
    job = db.session.get(EmailJob, body["id"])
    assert (job.recipient, job.recipient_name, job.priority) == ("ada@example.com", "Ada", 7)
    assert job.sender == "sender@massmailer.test"  # MASSMAILER_DEFAULT_FROM
    assert job.enqueued_at is not None, "the broker confirmed the publish"
    assert job.message_id.startswith("<") and job.message_id.endswith("@massmailer.test>")
    assert infra.queue_depth(broker_url, SEND_QUEUE) == 1


def test_status_shows_attempt_history_with_rfc3339_times(client, auth):
    job_id = post(client, auth, GOOD).get_json()["id"]

    response = client.get(f"/v1/emails/{job_id}", headers=auth)

    assert response.status_code == 200
    body = response.get_json()
    assert {"id", "status", "provider", "attempts", "history"} <= body.keys()
    assert (body["status"], body["attempts"], body["history"]) == ("PENDING", 0, [])
    assert body["created_at"].endswith("+00:00")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**GOOD, "to": "not-an-address"}, "to"),
        ({**GOOD, "to": ["a@example.com", "b@example.com"]}, "to"),
        ({**GOOD, "to": "a@example.com\r\nBcc: victim@example.com"}, "to"),
        ({**GOOD, "subject": "Hi\r\nBcc: victim@example.com"}, "subject"),
        ({**GOOD, "subject": "Hi\nX-Injected: 1"}, "subject"),
        ({**GOOD, "from": "Evil\r\n <e@example.com>"}, "from"),
        ({"to": "a@example.com", "subject": "No body"}, "text"),
        ({**GOOD, "priority": 10}, "priority"),
        ({**GOOD, "priority": -1}, "priority"),
        ({**GOOD, "priority": "high"}, "priority"),
        ({**GOOD, "headers": {"Bcc": "victim@example.com"}}, "headers.Bcc"),
        ({**GOOD, "headers": {"X-Tag": "a\r\nBcc: v@example.com"}}, "headers.X-Tag"),
        ({**GOOD, "unknown": 1}, "unknown"),
        ({**GOOD, "text": "x" * 1_000_001}, "text"),
    ],
)
def test_invalid_input_answers_400_naming_the_field(client, auth, payload, field):
    response = post(client, auth, payload)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["field"] == field
    assert error["message"]
    assert db.session.scalar(select(EmailJob.job_id)) is None, "nothing was stored"


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"{"])
def test_a_body_that_is_not_a_json_object_answers_400(client, auth, raw):
    response = client.post(
        "/v1/emails", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "body"


def test_a_huge_request_answers_413_in_json(client, auth):
    response = client.post(
        "/v1/emails", data=b"x" * 3_000_000, headers={**auth, "Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert "error" in response.get_json()


def test_unknown_id_answers_404(client, auth):
    response = client.get("/v1/emails/999999", headers=auth)

    assert response.status_code == 404
    assert response.get_json()["error"]["field"] == "id"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer wrong-key", "Basic dXNlcjpwYXNz"])
def test_missing_or_wrong_key_answers_401(client, header):
    headers = {"Authorization": header} if header else {}

    response = client.post("/v1/emails", json=GOOD, headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "a valid API key is required"


def test_revoked_key_answers_401_like_a_wrong_one(client, auth):
    apikeys.revoke(db.session, "tests")

    response = post(client, auth, GOOD)

    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "a valid API key is required"


def test_keys_are_stored_hashed(api_key):
    stored = db.session.scalars(select(apikeys.ApiKey.key_hash)).all()

    assert api_key not in stored
    assert stored == [apikeys.hash_key(api_key)]


def test_a_key_sees_only_its_own_jobs(client, auth):
    other = {"Authorization": f"Bearer {apikeys.create(db.session, 'other-team')}"}
    job_id = post(client, auth, GOOD).get_json()["id"]

    assert client.get(f"/v1/emails/{job_id}", headers=other).status_code == 404
    assert client.get(f"/v1/emails/{job_id}", headers=auth).status_code == 200
    assert db.session.get(EmailJob, job_id).api_key_id is not None


def test_cancel_moves_an_unclaimed_job_to_cancelled(client, auth):
    job_id = post(client, auth, GOOD).get_json()["id"]

    response = client.post(f"/v1/emails/{job_id}/cancel", headers=auth)

    assert response.status_code == 200
    assert db.session.get(EmailJob, job_id).status == "CANCELLED"
    assert client.post(f"/v1/emails/{job_id}/cancel", headers=auth).status_code == 409


def test_health_needs_no_key(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checked"] == ["postgresql", "rabbitmq", "redis"]
