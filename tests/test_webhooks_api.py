"""/v1/webhooks: register (secret once), list, delete, test; scopes; the SSRF guard at the door.

The app here runs without MASSMAILER_WEBHOOK_ALLOW_PRIVATE: refused URLs are IP literals or
plain http, so no test sends a DNS query or opens a connection.
"""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import func, select

from massmailer import apikeys
from massmailer.apikeys import KeyOptions
from massmailer.extensions import db
from massmailer.models import WebhookEndpoint, WebhookOutbox
from massmailer.webhooks import store

PUBLIC = "https://93.184.215.14/hooks"  # a literal: registering it resolves nothing


def register(client, auth, url=PUBLIC, events=("email.sent",)):
    return client.post("/v1/webhooks", json={"url": url, "events": list(events)}, headers=auth)


def test_registering_answers_the_secret_once_and_lists_without_it(client, auth):
    created = register(client, auth, events=["email.sent", "batch.completed"])

    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["secret"].startswith("whsec_")
    assert body["events"] == ["email.sent", "batch.completed"] and body["enabled"] is True
    listed = client.get("/v1/webhooks", headers=auth).get_json()["items"]
    assert [w["id"] for w in listed] == [body["id"]]
    assert "secret" not in listed[0]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest",
        "https://[::ffff:10.0.0.1]/",
        "https://2130706433/",
        "http://93.184.215.14/hook",
    ],
)
def test_a_non_public_or_plain_http_url_is_refused_at_registration(client, auth, url):
    response = register(client, auth, url=url)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "url"
    assert db.session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": PUBLIC, "events": []}, "events"),
        ({"url": PUBLIC, "events": ["email.opened"]}, "events"),
        ({"url": PUBLIC}, "events"),
        ({"events": ["email.sent"]}, "url"),
        ({"url": PUBLIC, "events": ["email.sent"], "secret": "x"}, "secret"),
    ],
)
def test_invalid_registrations_name_the_field(client, auth, payload, field):
    response = client.post("/v1/webhooks", json=payload, headers=auth)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field


def test_a_key_without_the_webhooks_scope_is_refused(client, app):
    raw = apikeys.create(db.session, "sender-only", KeyOptions(scopes=("send",)))

    response = register(client, {"Authorization": f"Bearer {raw}"})

    assert response.status_code == 403


def test_a_key_sees_and_deletes_only_its_own_endpoints(client, auth):
    other = {"Authorization": f"Bearer {apikeys.create(db.session, 'other')}"}
    mine = register(client, auth).get_json()["id"]

    assert client.get("/v1/webhooks", headers=other).get_json()["items"] == []
    assert client.delete(f"/v1/webhooks/{mine}", headers=other).status_code == 404
    assert client.get(f"/v1/webhooks/{mine}/deliveries", headers=other).status_code == 404
    assert client.delete(f"/v1/webhooks/{mine}", headers=auth).status_code == 204
    assert client.get("/v1/webhooks", headers=auth).get_json()["items"] == []


def test_a_test_event_goes_to_the_outbox(client, auth):
    webhook = register(client, auth).get_json()["id"]

    response = client.post(f"/v1/webhooks/{webhook}/test", headers=auth)

    assert response.status_code == 202
    row = db.session.scalar(select(WebhookOutbox))
    assert (row.endpoint_id, row.type, row.state) == (webhook, "webhook.test", "pending")
    assert response.get_json()["message_id"] == f"msg_{row.id}"
    assert client.get(f"/v1/webhooks/{webhook}/deliveries", headers=auth).get_json() == {
        "items": []
    }


def test_the_guard_runs_again_at_delivery_and_a_refusal_is_a_recorded_retry(
    client, auth, app, monkeypatch
):
    """An endpoint whose target turned private since registration (DNS changed) gets no try."""
    webhook = register(client, auth).get_json()["id"]
    db.session.get(WebhookEndpoint, webhook).url = "https://127.0.0.1:9/hook"
    db.session.commit()
    client.post(f"/v1/webhooks/{webhook}/test", headers=auth)

    def refuse(*args, **kwargs):
        raise AssertionError("a refused target was connected to")

    monkeypatch.setattr(socket, "create_connection", refuse)
    token, ids = store.claim_due(db.session)
    outcome = store.deliver(db.session, ids[0], token, allow_private=False)

    assert outcome == "retry"
    [tried] = client.get(f"/v1/webhooks/{webhook}/deliveries", headers=auth).get_json()["items"]
    assert tried["error"].startswith("refused: resolves to a non-public address")
    assert tried["status_code"] is None
    row = db.session.get(WebhookOutbox, ids[0])
    assert (row.state, row.attempts, row.claim_token) == ("pending", 1, None)


def test_a_second_claim_takes_nothing_while_the_first_holds_its_lease(client, auth):
    webhook = register(client, auth).get_json()["id"]
    client.post(f"/v1/webhooks/{webhook}/test", headers=auth)

    _, first = store.claim_due(db.session)
    _, second = store.claim_due(db.session)

    assert len(first) == 1 and second == []
    assert store.deliver(db.session, first[0], "not-the-token", allow_private=False) is None


def test_claims_are_bounded_per_endpoint(client, auth):
    webhook = register(client, auth).get_json()["id"]
    for _ in range(store.MAX_IN_FLIGHT_PER_ENDPOINT + 3):
        client.post(f"/v1/webhooks/{webhook}/test", headers=auth)

    _, first = store.claim_due(db.session)
    _, second = store.claim_due(db.session)

    assert len(first) == store.MAX_IN_FLIGHT_PER_ENDPOINT and second == []


def queue_tests(client, auth, receiver, count: int) -> int:
    """Register an endpoint that points at the receiver; put count test messages in its outbox."""
    webhook = register(client, auth).get_json()["id"]
    db.session.get(WebhookEndpoint, webhook).url = receiver.url  # past the guard: it is local
    db.session.commit()
    for _ in range(count):
        client.post(f"/v1/webhooks/{webhook}/test", headers=auth)
    return webhook


def states(webhook: int) -> dict[str, int]:
    rows = db.session.execute(
        select(WebhookOutbox.state, func.count())
        .where(WebhookOutbox.endpoint_id == webhook)
        .group_by(WebhookOutbox.state)
    )
    return dict(rows.all())


IN_FLIGHT = 4  # an endpoint's bound in these tests


def test_a_task_takes_the_endpoints_next_message_while_it_answers_2xx(client, auth, receiver):
    """The dispatch tick hands out 4; each task then keeps its slot busy until nothing is due."""
    webhook = queue_tests(client, auth, receiver, 10)
    token, claimed = store.claim_due(db.session, IN_FLIGHT)
    assert len(claimed) == IN_FLIGHT

    turn = store.deliver_in_turn(
        db.session, claimed[0], token, allow_private=True, max_in_flight=IN_FLIGHT
    )

    # Its own message and the 6 nobody held; the other 3 claims are still in flight.
    assert turn == store.Turn(["delivered"] * 7, None)
    assert len(receiver.requests) == 7
    assert states(webhook) == {"delivered": 7, "sending": 3}


def test_a_turn_stops_at_the_first_answer_that_is_not_2xx(client, auth, receiver):
    webhook = queue_tests(client, auth, receiver, 5)
    receiver.script = [200, 503]
    token, claimed = store.claim_due(db.session, IN_FLIGHT)

    turn = store.deliver_in_turn(
        db.session, claimed[0], token, allow_private=True, max_in_flight=IN_FLIGHT
    )

    assert turn == store.Turn(["delivered", "retry"], None)
    # The second was the one nobody held; its retry waits in next_attempt_at.
    assert states(webhook) == {"delivered": 1, "pending": 1, "sending": 3}


def test_when_its_time_is_up_a_turn_hands_its_next_message_on(client, auth, receiver):
    webhook = queue_tests(client, auth, receiver, 8)
    token, claimed = store.claim_due(db.session, IN_FLIGHT)
    ticks = iter([0.0, 1.0, 2.0, 99.0])

    turn = store.deliver_in_turn(
        db.session,
        claimed[0],
        token,
        allow_private=True,
        max_in_flight=IN_FLIGHT,
        turn_seconds=5,
        clock=lambda: next(ticks),
    )

    assert turn.outcomes == ["delivered"] * 3 and turn.handed_on is not None
    assert states(webhook) == {"delivered": 3, "sending": 4, "pending": 1}
    # The hand-off is claimed under the same token, for the task it is queued for.
    assert store.deliver(db.session, turn.handed_on, token, allow_private=True) == "delivered"
