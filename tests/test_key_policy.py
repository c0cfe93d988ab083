"""Per-key scopes, sender domains and quotas (Redis, across processes); the audit log; /metrics."""

from __future__ import annotations

import logging

import pytest
import redis
from sqlalchemy import func, select

from massmailer import apikeys, create_app
from massmailer.apikeys import KeyOptions
from massmailer.config import load_settings
from massmailer.extensions import db
from massmailer.models import AuditEntry, Batch, EmailJob
from massmailer.quotas import MemoryQuotas, Quota, RedisQuotas
from tests import infra

EMAIL = {"to": "ann@example.com", "subject": "hi", "text": "hello"}
BATCH = {
    "template": {"subject": "Hi", "text": "Hello {{ name }}"},
    "recipients": [{"to": f"r{i}@example.com", "vars": {"name": str(i)}} for i in range(3)],
}


def key_with(**options) -> dict[str, str]:
    name = options.pop("name", "limited")
    raw = apikeys.create(db.session, name, KeyOptions(**options))
    return {"Authorization": f"Bearer {raw}"}


def audit_rows() -> list[tuple[str, str, str]]:
    db.session.expire_all()
    rows = db.session.scalars(select(AuditEntry).order_by(AuditEntry.id))
    return [(r.actor, r.action, r.target) for r in rows]


# --- quotas, pure ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_memory_quota_allows_a_burst_then_one_request_per_interval():
    clock = Clock()
    quotas = MemoryQuotas(clock)
    quota = Quota(rate_per_second=2, burst=3, recipients_per_day=10)

    answers = [quotas.take_request(1, quota) for _ in range(4)]
    clock.now += 0.5
    later = quotas.take_request(1, quota)

    assert answers[:3] == [0.0, 0.0, 0.0]
    assert answers[3] == pytest.approx(0.5)
    assert later == 0.0
    assert quotas.take_request(2, quota) == 0.0, "another key has its own allowance"


def test_memory_recipient_cap_resets_at_midnight_utc():
    clock = Clock()
    quotas = MemoryQuotas(clock)
    quota = Quota(rate_per_second=1, burst=1, recipients_per_day=10)

    assert quotas.take_recipients(1, 8, quota) == 0.0
    wait = quotas.take_recipients(1, 3, quota)
    assert 0 < wait <= 86_400
    assert quotas.take_recipients(1, 2, quota) == 0.0, "a refused request is not counted"
    clock.now += wait
    assert quotas.take_recipients(1, 10, quota) == 0.0


# --- quotas through the API and Redis --------------------------------------------------------


@pytest.mark.integration
def test_requests_over_the_keys_rate_answer_429_with_retry_after(client, app):
    auth = key_with(rate_per_second=0.5, burst=2)

    answers = [client.get("/v1/emails/1", headers=auth) for _ in range(3)]

    assert [a.status_code for a in answers] == [404, 404, 429]
    assert answers[2].headers["Retry-After"] == "2"
    assert answers[2].get_json()["error"] == {
        "field": "Authorization",
        "message": "this API key is over its quota of requests per second",
    }


@pytest.mark.integration
def test_the_rate_is_shared_by_every_web_process_through_redis(client, env, redis_prefix):
    auth = key_with(rate_per_second=0.1, burst=3)
    other_process = create_app(load_settings(env)).test_client()

    codes = [
        c.get("/v1/emails/1", headers=auth).status_code
        for c in (client, other_process, client, other_process)
    ]

    assert codes == [404, 404, 404, 429]
    keys = redis.Redis.from_url(infra.REDIS_URL).keys(f"{redis_prefix}quota:*")
    assert keys, "the counter lives in Redis under the run's prefix"


@pytest.mark.integration
def test_recipients_over_the_daily_cap_answer_429_and_store_nothing(client, app):
    auth = key_with(recipients_per_day=4)

    first = client.post("/v1/batches", json=BATCH, headers=auth)
    second = client.post("/v1/batches", json=BATCH, headers=auth)
    single = client.post("/v1/emails", json=EMAIL, headers=auth)

    assert (first.status_code, second.status_code, single.status_code) == (202, 429, 202)
    assert 1 <= int(second.headers["Retry-After"]) <= 86_400
    # The refused batch's jobs were copied before it was counted, and rolled back with it.
    stored = db.session.scalars(select(EmailJob.recipient)).all()
    assert len(stored) == first.get_json()["accepted"] + 1
    assert db.session.scalar(select(func.count()).select_from(Batch)) == 1
    assert client.post("/v1/emails", json=EMAIL, headers=auth).status_code == 429


def test_redis_quotas_refuse_above_the_cap_without_counting_the_refused():
    client = redis.Redis.from_url(infra.REDIS_URL)
    prefix = f"mmtest:{infra.run_id()}:quota-unit:"
    quotas = RedisQuotas(client, prefix)
    quota = Quota(rate_per_second=1000, burst=1000, recipients_per_day=5)
    try:
        assert quotas.take_recipients(7, 5, quota) == 0.0
        assert quotas.take_recipients(7, 1, quota) > 0
        assert quotas.take_recipients(8, 5, quota) == 0.0
    finally:
        infra.delete_redis_prefix(prefix)


# --- scopes and sender domains ---------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("scopes", "method", "path", "body", "expected"),
    [
        (("read",), "post", "/v1/emails", EMAIL, 403),
        (("read",), "post", "/v1/batches", BATCH, 403),
        (("read",), "delete", "/v1/suppressions/a@example.com", None, 403),
        (("read",), "get", "/v1/suppressions", None, 403),
        (("send",), "get", "/v1/emails/1", None, 403),
        (("send",), "post", "/v1/emails", EMAIL, 202),
        (("read",), "get", "/v1/emails/1", None, 404),
        (("suppressions",), "get", "/v1/suppressions", None, 200),
        (("suppressions",), "post", "/v1/emails", EMAIL, 403),
        (("admin",), "post", "/v1/emails", EMAIL, 202),
        (("admin",), "get", "/v1/suppressions", None, 200),
        (("send",), "get", "/v1/webhooks", None, 403),
        (("read",), "delete", "/v1/webhooks/1", None, 403),
        (("webhooks",), "get", "/v1/webhooks", None, 200),
        (("webhooks",), "post", "/v1/webhooks/1/test", None, 404),
        (("admin",), "get", "/v1/webhooks", None, 200),
    ],
)
def test_each_endpoint_needs_its_scope(client, app, scopes, method, path, body, expected):
    auth = key_with(scopes=scopes)

    response = getattr(client, method)(path, json=body, headers=auth)

    assert response.status_code == expected, response.get_json()
    if expected == 403:
        assert response.get_json()["error"]["field"] == "Authorization"
        assert "scope" in response.get_json()["error"]["message"]


@pytest.mark.integration
def test_a_key_limited_to_sender_domains_cannot_send_from_another(client, app):
    auth = key_with(sender_domains=("shop.example",))

    own = client.post("/v1/emails", json={**EMAIL, "from": "news@Shop.Example"}, headers=auth)
    other = client.post("/v1/emails", json={**EMAIL, "from": "ceo@bank.example"}, headers=auth)
    batch = client.post("/v1/batches", json={**BATCH, "from": "x@bank.example"}, headers=auth)

    assert own.status_code == 202
    assert (other.status_code, batch.status_code) == (403, 403)
    assert other.get_json()["error"] == {
        "field": "from",
        "message": "this API key may send only from: shop.example",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scopes": ("root",)}, "unknown scope"),
        ({"scopes": ()}, "at least one scope"),
        ({"sender_domains": ("not a domain",)}, "is not a domain name"),
        ({"sender_domains": ("exa\nmple.com",)}, "is not a domain name"),
    ],
)
@pytest.mark.integration
def test_bad_key_options_are_refused(app, options, message):
    with pytest.raises(apikeys.ApiKeyError, match=message):
        apikeys.create(db.session, "bad", KeyOptions(**options))


# --- audit log -------------------------------------------------------------------------------


@pytest.mark.integration
def test_suppression_and_key_changes_are_audited_with_key_and_time(client, app):
    auth = key_with(name="ops-key", scopes=("suppressions",))
    created = client.post("/v1/suppressions", json={"email": "Bob@example.com"}, headers=auth)
    again = client.post("/v1/suppressions", json={"email": "bob@example.com"}, headers=auth)
    removed = client.delete("/v1/suppressions/bob@example.com", headers=auth)
    missing = client.delete("/v1/suppressions/bob@example.com", headers=auth)
    apikeys.revoke(db.session, "ops-key")

    assert [r.status_code for r in (created, again, removed, missing)] == [201, 200, 204, 404]
    assert audit_rows() == [
        ("operator", "api_key.create", "ops-key"),
        ("key:ops-key", "suppression.add", "bob@example.com"),
        ("key:ops-key", "suppression.remove", "bob@example.com"),
        ("operator", "api_key.revoke", "ops-key"),
    ]
    entries = db.session.scalars(select(AuditEntry)).all()
    assert all(e.at is not None and e.at.tzinfo is not None for e in entries)
    assert entries[1].api_key_id == entries[2].api_key_id is not None


# --- /metrics --------------------------------------------------------------------------------


@pytest.mark.integration
def test_metrics_are_closed_in_production_without_a_token_and_start_up_says_so(env, caplog):
    closed = {k: v for k, v in env.items() if k != "MASSMAILER_METRICS_PUBLIC"}

    with caplog.at_level(logging.WARNING, logger="massmailer.api.metrics"):
        app = create_app(load_settings(closed))
    response = app.test_client().get("/metrics")

    assert response.status_code == 503
    assert "MASSMAILER_METRICS_TOKEN" in response.get_data(as_text=True)
    assert any("MASSMAILER_METRICS_TOKEN" in r.getMessage() for r in caplog.records)


def test_the_demo_serves_metrics_without_a_token_and_is_not_throttled():
    demo = load_settings({}, require_services=False)

    assert demo.ops.metrics_public is True
    assert demo.key_rate_per_second >= 100_000
