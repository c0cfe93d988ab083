"""/v1/suppressions: list, look up, add, remove; what delivery does with a suppressed address."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob
from tests import infra

pytestmark = pytest.mark.integration


def add(client, auth, email, **fields):
    return client.post("/v1/suppressions", json={"email": email, **fields}, headers=auth)


def test_an_added_address_can_be_looked_up(client, auth):
    response = add(client, auth, "Ann@Example.com", reason="manual", detail="asked by phone")

    assert response.status_code == 201
    body = response.get_json()
    assert (body["email"], body["reason"], body["detail"]) == (
        "ann@example.com",
        "manual",
        "asked by phone",
    )
    assert body["created_at"].endswith("+00:00")
    assert client.get("/v1/suppressions/ANN@example.com", headers=auth).get_json() == body


def test_adding_an_address_again_keeps_its_first_reason(client, auth):
    add(client, auth, "ann@example.com", reason="hard_bounce")

    response = add(client, auth, "ann@example.com")

    assert response.status_code == 200
    assert response.get_json()["reason"] == "hard_bounce"


def test_the_list_pages_in_address_order_and_filters_by_reason(client, auth):
    for name, reason in [("d", "manual"), ("b", "unsubscribe"), ("a", "manual"), ("c", "manual")]:
        add(client, auth, f"{name}@example.com", reason=reason)

    first = client.get("/v1/suppressions?limit=2", headers=auth).get_json()
    second = client.get(f"/v1/suppressions?limit=2&after={first['next']}", headers=auth).get_json()
    manual = client.get("/v1/suppressions?reason=manual", headers=auth).get_json()

    assert [i["email"] for i in first["items"]] == ["a@example.com", "b@example.com"]
    assert [i["email"] for i in second["items"]] == ["c@example.com", "d@example.com"]
    assert second["next"] is None
    assert [i["email"] for i in manual["items"]] == [f"{n}@example.com" for n in "acd"]


def test_a_removed_address_is_no_longer_suppressed(client, auth):
    add(client, auth, "ann@example.com")

    response = client.delete("/v1/suppressions/ann@example.com", headers=auth)

    assert response.status_code == 204
    assert client.get("/v1/suppressions/ann@example.com", headers=auth).status_code == 404
    assert client.delete("/v1/suppressions/ann@example.com", headers=auth).status_code == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@example.com\r\nBcc: b@example.com"}, "email"),
        ({}, "email"),
        ({"email": "a@example.com", "reason": "spite"}, "reason"),
        ({"email": "a@example.com", "detail": 5}, "detail"),
        ({"email": "a@example.com", "until": "2030-01-01"}, "until"),
        (["a@example.com"], "body"),
    ],
)
def test_a_bad_suppression_answers_400(client, auth, payload, field):
    response = client.post("/v1/suppressions", json=payload, headers=auth)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "reason=other"])
def test_a_bad_list_query_answers_400(client, auth, query):
    assert client.get(f"/v1/suppressions?{query}", headers=auth).status_code == 400


def test_the_suppression_list_needs_an_api_key(client):
    assert client.get("/v1/suppressions").status_code == 401
    assert client.post("/v1/suppressions", json={"email": "a@example.com"}).status_code == 401


@pytest.mark.slow
def test_a_send_to_a_suppressed_address_fails_without_contacting_a_provider(
    client, auth, env, smtp_server
):
    add(client, auth, "gone@example.com", reason="unsubscribe")
    response = client.post(
        "/v1/emails", json={"to": "Gone@Example.com", "subject": "Hi", "text": "x"}, headers=auth
    )
    job_id = response.get_json()["id"]

    with infra.running_worker(env):
        infra.wait_until(
            lambda: _status(job_id) != "PENDING", 30, message="the job to reach a final status"
        )

    job = db.session.get(EmailJob, job_id)
    assert (job.status, job.last_error, job.attempts, job.provider) == (
        "FAILED",
        "suppressed",
        0,
        None,
    )
    assert db.session.scalars(select(EmailAttempt).where(EmailAttempt.job_id == job_id)).all() == []
    assert (smtp_server.connections, smtp_server.message_count) == (0, 0)


def _status(job_id: int) -> str:
    db.session.expire_all()
    return db.session.get(EmailJob, job_id).status
