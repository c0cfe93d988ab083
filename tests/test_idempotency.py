"""Idempotency-Key on POST /v1/emails and /v1/batches, against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from massmailer import apikeys, intake
from massmailer.extensions import db
from massmailer.idempotency import Idempotency, fingerprint
from massmailer.models import Batch, EmailJob, IdempotencyKey
from massmailer.models.types import utcnow
from massmailer.queues import SEND_QUEUE
from massmailer.validation import parse_email_request
from tests import infra

pytestmark = pytest.mark.integration

EMAIL = {"to": "ada@example.com", "subject": "Hello", "text": "Hi Ada"}
BATCH = {
    "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"},
    "recipients": [{"to": f"r{i}@example.com", "vars": {"name": f"R{i}"}} for i in range(3)],
}


def post(client, auth, key, payload=EMAIL, path="/v1/emails"):
    headers = {**auth, "Idempotency-Key": key} if key is not None else auth
    return client.post(path, json=payload, headers=headers)


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_fingerprint_ignores_key_order_but_not_values_or_path():
    same = fingerprint("POST", "/v1/emails", {"a": 1, "b": [1, {"c": 2, "d": 3}]})

    assert same == fingerprint("POST", "/v1/emails", {"b": [1, {"d": 3, "c": 2}], "a": 1})
    assert same != fingerprint("POST", "/v1/emails", {"a": 1, "b": [{"c": 2, "d": 3}, 1]})
    assert same != fingerprint("POST", "/v1/batches", {"a": 1, "b": [1, {"c": 2, "d": 3}]})


def test_a_repeated_email_returns_the_first_response_and_creates_nothing(client, auth, broker_url):
    first = post(client, auth, "order-42")
    again = post(
        client, auth, "order-42", {"text": "Hi Ada", "subject": "Hello", "to": EMAIL["to"]}
    )

    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count(EmailJob) == 1
    assert infra.queue_depth(broker_url, SEND_QUEUE) == 1, "the repeat published nothing"


def test_a_repeated_batch_returns_the_first_response_and_creates_nothing(client, auth):
    first = post(client, auth, "campaign-7", BATCH, "/v1/batches")
    again = post(client, auth, "campaign-7", BATCH, "/v1/batches")

    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json() == {"id": 1, "accepted": 3, "rejected": []}
    assert (count(Batch), count(EmailJob)) == (1, 3)


def test_the_same_key_with_another_body_answers_409(client, auth):
    post(client, auth, "order-42")

    response = post(client, auth, "order-42", {**EMAIL, "subject": "Changed"})
    elsewhere = post(client, auth, "order-42", BATCH, "/v1/batches")

    assert response.status_code == elsewhere.status_code == 409
    assert response.get_json()["error"]["field"] == "Idempotency-Key"
    assert "different request" in response.get_json()["error"]["message"]
    assert (count(EmailJob), count(Batch)) == (1, 0)


def test_keys_belong_to_the_api_key_that_sent_them(client, auth):
    other = {"Authorization": f"Bearer {apikeys.create(db.session, 'other')}"}

    mine = post(client, auth, "shared-key").get_json()
    theirs = post(client, other, "shared-key").get_json()

    assert mine["id"] != theirs["id"]
    assert count(EmailJob) == 2


def test_without_a_key_every_post_creates_a_job(client, auth):
    post(client, auth, None)
    post(client, auth, None)

    assert count(EmailJob) == 2
    assert count(IdempotencyKey) == 0


def test_an_expired_key_starts_over(client, auth, settings):
    first = post(client, auth, "order-42").get_json()
    ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
    db.session.execute(update(IdempotencyKey).values(created_at=utcnow() - ttl - timedelta(1)))
    db.session.commit()

    again = post(client, auth, "order-42", {**EMAIL, "subject": "Another day"})

    assert again.status_code == 202
    assert again.get_json()["id"] != first["id"]
    assert count(IdempotencyKey) == 1


def test_a_refused_request_does_not_use_up_its_key(client, auth):
    refused = post(client, auth, "order-42", {**EMAIL, "to": "not-an-address"})
    accepted = post(client, auth, "order-42")

    assert (refused.status_code, accepted.status_code) == (400, 202)
    assert count(EmailJob) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_answers_400(client, auth, key):
    response = post(client, auth, key)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "Idempotency-Key"
    assert count(EmailJob) == 0


def test_a_concurrent_request_with_the_same_key_waits_for_the_first_and_replays_it(
    app, client, auth, api_key, settings
):
    key_id = apikeys.authenticate(db.session, api_key).id
    request = parse_email_request(EMAIL, default_from=settings.default_from)
    hashed = fingerprint("POST", "/v1/emails", EMAIL)
    engine = db.engine
    inside, may_commit, result = threading.Event(), threading.Event(), {}

    def first_request():
        # Holds the key in an open transaction, as a request in the middle of its inserts does.
        with Session(engine) as session:
            guard = Idempotency(session, key_id, "race", hashed, settings.idempotency_ttl_seconds)

            def create():
                job = intake.store(session, request, api_key_id=key_id, settings=settings)
                inside.set()  # the key row is inserted, not committed
                may_commit.wait(10)
                return 202, {"id": job.job_id, "status": "PENDING"}, job

            result["first"] = guard.run(create)[0]

    def second_request():
        result["second"] = post(app.test_client(), auth, "race")

    first = threading.Thread(target=first_request)
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=second_request)
    second.start()
    second.join(1.0)
    assert second.is_alive(), "the second request waits on the first one's key row"
    may_commit.set()
    first.join(10)
    second.join(10)

    assert result["second"].status_code == 202
    assert result["second"].get_json() == result["first"].body
    assert result["second"].headers["Idempotent-Replayed"] == "true"
    assert count(EmailJob) == 1


def test_simultaneous_identical_requests_create_one_batch(app, auth):
    barrier = threading.Barrier(4)
    responses = []

    def send():
        test_client = app.test_client()
        barrier.wait()
        responses.append(post(test_client, auth, "together", BATCH, "/v1/batches"))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert [r.status_code for r in responses] == [202] * 4
    assert len({r.get_data() for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert (count(Batch), count(EmailJob)) == (1, 3)
