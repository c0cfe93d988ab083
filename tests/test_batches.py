"""Batches through the real stack: the API, PostgreSQL, RabbitMQ, Celery workers, an SMTP server."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from sqlalchemy import func, select, update

from massmailer import apikeys, jobstore
from massmailer.dispatch import chunk_length
from massmailer.extensions import db
from massmailer.models import Batch, EmailJob, Suppression
from massmailer.models.types import utcnow
from massmailer.queues import SEND_QUEUE
from tests import infra

pytestmark = pytest.mark.integration

TEMPLATE = {
    "subject": "Hello {{ name }}",
    "text": "Dear {{ name }}, your code is {{ code }}.",
    "html": "<p>Dear {{ name }}, your code is <b>{{ code }}</b>.</p>",
}


def recipients(n: int, start: int = 0) -> list[dict]:
    return [
        {"to": f"reader{i}@example.com", "vars": {"name": f"Reader {i}", "code": i}}
        for i in range(start, start + n)
    ]


def post_batch(client, auth, **fields):
    payload = {"template": TEMPLATE, "recipients": recipients(3), **fields}
    return client.post("/v1/batches", json=payload, headers=auth)


def accepted_batch(client, auth, **fields) -> dict:
    response = post_batch(client, auth, **fields)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def jobs_of(batch_id: int) -> list[EmailJob]:
    db.session.expire_all()
    query = select(EmailJob).where(EmailJob.batch_id == batch_id).order_by(EmailJob.job_id)
    return list(db.session.scalars(query))


def parsed(received):
    return message_from_bytes(received.data, policy=policy.default)


# --- intake -------------------------------------------------------------------------------


def test_a_batch_is_stored_with_its_template_once_and_queued_in_chunks(
    client, auth, broker_url, settings
):
    body = accepted_batch(client, auth, recipients=recipients(450), priority=4)

    assert (body["accepted"], body["rejected"]) == (450, [])
    batch = db.session.get(Batch, body["id"])
    assert (batch.subject_template, batch.text_template) == (TEMPLATE["subject"], TEMPLATE["text"])
    jobs = jobs_of(body["id"])
    assert len(jobs) == 450
    first = jobs[0]
    # Each job keeps its variables and its rendered subject; the parts are rendered when sent.
    assert first.template_vars == {"name": "Reader 0", "code": 0}
    assert (first.subject, first.body, first.html) == ("Hello Reader 0", "", None)
    assert (first.priority, first.status, first.category) == (4, "PENDING", "transactional")
    assert all(j.enqueued_at is not None for j in jobs), "every chunk's publish was confirmed"
    assert len({j.message_id for j in jobs}) == 450
    # 450 jobs spread over at least 8 chunks of 25+ (dispatch.chunk_length): 8 chunks of 57,
    # the last one shorter.
    assert settings.chunk_size == 800
    assert chunk_length(450, settings.chunk_size) == 57
    assert infra.queue_depth(broker_url, SEND_QUEUE) == 8


def test_each_refused_recipient_comes_back_with_its_reason(client, auth):
    db.session.add(Suppression(email="gone@example.com", reason="unsubscribe"))
    db.session.commit()
    people = [
        {"to": "Ann <ann@example.com>", "vars": {"name": "Ann", "code": 1}},
        {"to": "not-an-address", "vars": {"name": "X", "code": 2}},
        {"to": "ANN@example.com", "vars": {"name": "Ann again", "code": 3}},
        {"to": "gone@example.com", "vars": {"name": "Gone", "code": 4}},
        {"to": "nameless@example.com", "vars": {"code": 5}},
        {"to": "evil@example.com", "vars": {"name": "x\r\nBcc: victim@example.com", "code": 6}},
        {"to": 42},
        {"to": "bob@example.com", "vars": {"name": "Bob", "code": 7}},
    ]

    body = accepted_batch(client, auth, recipients=people)

    assert body["accepted"] == 2
    reasons = {r["index"]: (r["to"], r["reason"]) for r in body["rejected"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert reasons[1][0] == "not-an-address" and reasons[1][1].startswith("bad address")
    assert reasons[2] == ("ANN@example.com", "duplicate in this request")
    assert reasons[3] == ("gone@example.com", "suppressed")
    assert reasons[4][1] == "template subject: missing variable: 'name' is undefined"
    assert "line breaks" in reasons[5][1]
    assert reasons[6] == ("42", "bad address: must be a string like user@example.com")
    jobs = jobs_of(body["id"])
    assert [(j.recipient, j.recipient_name) for j in jobs] == [
        ("ann@example.com", "Ann"),
        ("bob@example.com", None),
    ]
    batch = db.session.get(Batch, body["id"])
    assert (batch.accepted, batch.rejected) == (2, 6)


def test_a_batch_streamed_in_many_reads_keeps_each_job_with_its_own_recipient(client, auth):
    # Screened as the COPY reads it (64 KiB a read; this batch is several hundred KiB), with
    # every seventh recipient refused on the way: ids, Message-IDs and rows stay in step.
    people = recipients(2000)
    for refused in people[::7]:
        del refused["vars"]["name"]

    body = accepted_batch(client, auth, recipients=people)

    refused = list(range(0, 2000, 7))
    assert [r["index"] for r in body["rejected"]] == refused
    assert body["accepted"] == 2000 - len(refused)
    jobs = jobs_of(body["id"])
    expected = [i for i in range(2000) if i % 7]
    assert [j.recipient for j in jobs] == [f"reader{i}@example.com" for i in expected]
    assert all(j.subject == f"Hello Reader {i}" for j, i in zip(jobs, expected, strict=True))
    assert all(j.template_vars["code"] == i for j, i in zip(jobs, expected, strict=True))
    assert len({j.message_id for j in jobs}) == len(jobs)
    batch = db.session.get(Batch, body["id"])
    assert (batch.accepted, batch.rejected) == (len(expected), len(refused))


def test_a_batch_whose_every_recipient_is_refused_by_its_variables_stores_no_job(client, auth):
    people = recipients(3)
    for person in people:
        del person["vars"]["name"]

    body = accepted_batch(client, auth, recipients=people)

    assert (body["accepted"], len(body["rejected"])) == (0, 3)
    assert jobs_of(body["id"]) == []
    batch = db.session.get(Batch, body["id"])
    assert (batch.accepted, batch.rejected, batch.unconfirmed_since) == (0, 3, None)


def test_more_recipients_than_the_limit_answers_413_and_stores_nothing(client, auth, settings):
    too_many = recipients(settings.max_batch_recipients + 1)

    response = post_batch(client, auth, recipients=too_many)

    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["field"] == "recipients"
    assert "at most 10000 recipients per request" in error["message"]
    assert db.session.scalar(select(func.count()).select_from(Batch)) == 0


def test_a_body_larger_than_the_batch_limit_answers_413(app, client, auth, settings):
    app.extensions["massmailer.settings"] = replace(settings, max_batch_bytes=2048)

    response = post_batch(client, auth, recipients=recipients(100))

    assert response.status_code == 413
    assert response.get_json()["error"]["message"]
    assert db.session.scalar(select(func.count()).select_from(Batch)) == 0


def test_a_batch_body_may_be_larger_than_a_single_email_body(app, client, auth, settings):
    many = [{**r, "vars": {**r["vars"], "bio": "x" * 250}} for r in recipients(10_000)]
    assert len(json.dumps(many)) > app.config["MAX_CONTENT_LENGTH"]

    assert post_batch(client, auth, recipients=many).status_code == 202


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"template": {"subject": "Hi", "text": "{% if %}"}}, "template.text"),
        ({"template": {"subject": "Hi {{ name", "text": "x"}}, "template.subject"),
        ({"template": {"subject": "Hi", "text": "{{ x|center(9) }}"}}, "template.text"),
        ({"template": {"subject": "Hi"}}, "template.text"),
        ({"template": {"text": "x"}}, "template.subject"),
        ({"template": {"subject": "Hi\r\nBcc: x@example.com", "text": "x"}}, "template.subject"),
        ({"template": {"subject": "Hi", "text": "x", "css": "y"}}, "template.css"),
        ({"template": "Hello"}, "template"),
        ({"template": {"subject": "Hi", "text": "{{ unsubscribe_url }}"}}, "template"),
        ({"recipients": []}, "recipients"),
        ({"recipients": "a@example.com"}, "recipients"),
        ({"recipients": ["a@example.com"]}, "recipients[0]"),
        ({"recipients": [{"to": "a@example.com", "vars": [1]}]}, "recipients[0].vars"),
        ({"recipients": [{"to": "a@example.com", "cc": "b@example.com"}]}, "recipients[0].cc"),
        ({"priority": 12}, "priority"),
        ({"category": "newsletter"}, "category"),
        ({"send_at": "tomorrow"}, "send_at"),
        ({"from": "Evil\r\n <e@example.com>"}, "from"),
        ({"bcc": "x@example.com"}, "bcc"),
    ],
)
def test_a_malformed_batch_answers_400_naming_the_field(client, auth, fields, field):
    response = post_batch(client, auth, **fields)

    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["field"] == field
    assert db.session.scalar(select(func.count()).select_from(Batch)) == 0


def test_a_body_that_is_not_json_answers_400(client, auth):
    response = client.post("/v1/batches", data="recipients", headers=auth)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "body"


def test_a_key_sees_and_cancels_only_its_own_batches(client, auth):
    batch_id = accepted_batch(client, auth)["id"]
    other = {"Authorization": f"Bearer {apikeys.create(db.session, 'other')}"}

    assert client.get(f"/v1/batches/{batch_id}", headers=other).status_code == 404
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=other).status_code == 404
    assert client.get(f"/v1/batches/{batch_id}", headers=auth).status_code == 200
    assert client.get("/v1/batches/999999", headers=auth).status_code == 404
    assert client.get(f"/v1/batches/{batch_id}").status_code == 401


def test_progress_counts_jobs_by_status(client, auth):
    batch_id = accepted_batch(client, auth, recipients=recipients(5))["id"]
    ids = [j.job_id for j in jobs_of(batch_id)]
    now = utcnow()
    db.session.execute(
        update(EmailJob)
        .where(EmailJob.job_id.in_(ids[:2]))
        .values(status="SENT", sent_at=now - timedelta(seconds=10))
    )
    db.session.execute(update(EmailJob).where(EmailJob.job_id == ids[2]).values(status="FAILED"))
    db.session.commit()

    body = client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()

    assert body["status"] == "SENDING"
    assert body["counts"] == {"PENDING": 2, "SENT": 2, "FAILED": 1, "CANCELLED": 0}
    assert body["rate_per_second"]["last_minute"] == round(2 / 60, 2)
    assert body["created_at"].endswith("+00:00") and body["in_flight"] == 0


def test_cancel_stops_every_unclaimed_job_and_reports_the_claimed_ones(client, auth, settings):
    batch_id = accepted_batch(client, auth, recipients=recipients(10))["id"]
    ids = [j.job_id for j in jobs_of(batch_id)]
    # A worker holds three of them right now.
    jobstore.claim(db.session, ids[:3], "a" * 32, lease_seconds=600)

    response = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth)

    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["cancelled"], body["in_flight"]) == ("CANCELLED", 7, 3)
    progress = client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()
    assert progress["status"] == "CANCELLED"
    assert progress["counts"] == {"PENDING": 3, "SENT": 0, "FAILED": 0, "CANCELLED": 7}
    assert progress["in_flight"] == 3
    again = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth).get_json()
    assert (again["cancelled"], again["in_flight"]) == (0, 3)


def test_a_name_used_only_in_a_branch_or_under_default_is_not_asked_of_each_recipient(client, auth):
    template = {
        "subject": "Hi {{ name|default('there') }}",
        "text": "{% if vip %}Your perk: {{ perk }}{% endif %} Code {{ code }}.",
    }
    people = [
        {"to": "plain@example.com", "vars": {"code": 1, "vip": False}},
        {"to": "vip@example.com", "vars": {"code": 2, "vip": True, "perk": "lounge"}},
        {"to": "novip@example.com", "vars": {"code": 3}},
    ]

    body = accepted_batch(client, auth, template=template, recipients=people)

    assert body["accepted"] == 2
    assert body["rejected"] == [
        {
            "index": 2,
            "to": "novip@example.com",
            "reason": "template text: missing variable: 'vip' is undefined",
        }
    ]
    assert [j.subject for j in jobs_of(body["id"])] == ["Hi there", "Hi there"]


def test_variables_beyond_their_bounds_are_refused_per_recipient(client, auth):
    from massmailer.batches.variables import MAX_VARS_BYTES, MAX_VARS_DEPTH, MAX_VARS_ITEMS

    base = {"name": "N", "code": 1}
    people = [
        {"to": "big@example.com", "vars": {**base, "bio": "é" * MAX_VARS_BYTES}},
        {"to": "long@example.com", "vars": {**base, "ids": [0] * (MAX_VARS_ITEMS + 1)}},
        {"to": "deep@example.com", "vars": {**base, "a": [[[[1]]]]}},
        {"to": "fine@example.com", "vars": {**base, "a": [[{"b": 1}]]}},
    ]

    body = accepted_batch(client, auth, recipients=people)

    assert body["accepted"] == 1
    reasons = [r["reason"] for r in body["rejected"]]
    assert reasons == [
        f"vars larger than {MAX_VARS_BYTES} bytes as JSON",
        f"vars hold a list or object of more than {MAX_VARS_ITEMS} items",
        f"vars nested deeper than {MAX_VARS_DEPTH} levels",
    ]


def test_nan_in_variables_is_refused_per_recipient_not_a_server_error(client, auth):
    raw = (
        '{"template": {"subject": "Hi {{ name }}", "text": "x"}, "recipients": ['
        '{"to": "nan@example.com", "vars": {"name": NaN}},'
        '{"to": "ok@example.com", "vars": {"name": "Ok"}}]}'
    )

    response = client.post(
        "/v1/batches", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["reason"] == "vars must not hold NaN or Infinity"


def test_copied_jobs_keep_every_character_of_their_variables_and_names(client, auth, settings):
    # (A NUL never gets this far: the API refuses it in any JSON string, api/body.py.)
    tricky = 'tab\there, new\nline, back\\slash \\N, quote " and ü 𝄞 \u0001 end'
    people = [
        {"to": '"Back\\\\slash, Ann" <ann@example.com>', "vars": {"name": "A\tB", "code": 1}},
        {"to": "bob@EXAMPLE.com", "vars": {"name": "Bob", "code": 2, "note": tricky}},
        {"to": "cy@example.com", "vars": {"name": "\\N", "code": None, "n": {"k": [1.5]}}},
    ]

    body = accepted_batch(client, auth, recipients=people)

    assert body["accepted"] == 3
    jobs = jobs_of(body["id"])
    assert [j.recipient for j in jobs] == ["ann@example.com", "bob@example.com", "cy@example.com"]
    assert jobs[0].recipient_name == "Back\\slash, Ann"
    assert [j.template_vars for j in jobs] == [p["vars"] for p in people]
    assert [j.subject for j in jobs] == [f"Hello {p['vars']['name']}" for p in people]
    assert all(j.message_id.endswith(f"@{settings.message_id_domain}>") for j in jobs)
    assert len({j.message_id for j in jobs}) == 3
    assert {(j.sender, j.status, j.attempts, j.body, j.html) for j in jobs} == {
        ("sender@massmailer.test", "PENDING", 0, "", None)
    }
    assert [j.job_id for j in jobs] == sorted(j.job_id for j in jobs)


def _claim_plan(ids: list[int]) -> str:
    """EXPLAIN of the claim a worker runs for these ids (jobstore.claim's statement)."""
    from sqlalchemy import text
    from sqlalchemy import update as sql_update

    from massmailer.jobstore.core import CLOCK_TOLERANCE, claimable, jobs

    now = utcnow()
    stmt = (
        sql_update(jobs)
        .where(jobs.c.job_id.in_(ids), claimable(now, now + CLOCK_TOLERANCE, named_by_id=True))
        .values(claim_token="x" * 32, lease_until=now, updated_at=now)
    )
    sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
    return "\n".join(db.session.execute(text(f"EXPLAIN {sql}")).scalars())


def _analyze_count() -> int:
    from sqlalchemy import text

    db.session.commit()  # a new transaction sees the statistics as they are now
    return db.session.scalar(
        text("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'email_jobs'")
    )


def _changes_since_analyze() -> int:
    from sqlalchemy import text

    db.session.commit()
    return db.session.scalar(
        text("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'email_jobs'")
    )


@pytest.mark.slow
def test_intake_runs_no_analyze_and_the_next_sweep_keeps_the_claim_on_the_primary_key(
    app, client, auth, settings
):
    from massmailer import services, sweeper

    before = _analyze_count()
    batch_id = accepted_batch(client, auth, recipients=recipients(10_000))["id"]
    assert _analyze_count() == before, "POST /v1/batches ran ANALYZE"
    # A backend reports its inserts to the statistics up to a second or more after its commit;
    # reported after the sweep's ANALYZE, they would look like 10,000 new changes to the next one.
    infra.wait_until(lambda: _changes_since_analyze() >= 10_000, 30, message="the stats report")
    ids = [j.job_id for j in jobs_of(batch_id)]
    # Before the sweep the statistics do not know the batch, and still no status index may serve
    # the claim (jobstore.guards). At 10,000 rows a sequential scan can be the planner's honest
    # choice; test_claim_plan shows the primary key at 100,000 with the same stale statistics.
    before_plan = _claim_plan(ids[5000:5200])
    print("\nclaim plan before the sweep uses", re.findall(r"(?:pk|ix)_email_jobs\w*", before_plan))
    assert "ix_email_jobs_status_updated_at" not in before_plan, before_plan
    assert "ix_email_jobs_pending_created_at" not in before_plan, before_plan

    publisher = app.extensions["massmailer.publisher"]
    sweeper.sweep(db.session, services.services_for(settings, publisher))

    assert _analyze_count() == before + 1
    plan = _claim_plan(ids[5000:5200])
    assert "pk_email_jobs" in plan, plan
    assert "ix_email_jobs_status_updated_at" not in plan, plan
    # Nothing changed since: the next sweep leaves the statistics alone.
    sweeper.sweep(db.session, services.services_for(settings, publisher))
    assert _analyze_count() == before + 1


# --- through a real worker ----------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_recipients_each_get_their_own_message(client, auth, env, smtp_server):
    started = time.monotonic()
    body = accepted_batch(client, auth, recipients=recipients(10_000))
    accepted_in = time.monotonic() - started
    assert body["accepted"] == 10_000

    with infra.running_worker(env, concurrency=2):
        sending_from = time.monotonic()
        infra.wait_until(lambda: smtp_server.message_count >= 10_000, 90, 0.2, "10,000 messages")
        sent_in = time.monotonic() - sending_from
        progress = infra.wait_until(
            lambda: _done(client, auth, body["id"]), 30, 0.2, "the batch to be DONE"
        )

    assert progress["counts"] == {"PENDING": 0, "SENT": 10_000, "FAILED": 0, "CANCELLED": 0}
    messages = smtp_server.messages
    assert len(messages) == 10_000
    seen = set()
    for received in messages:
        message = parsed(received)
        i = int(received.rcpt_tos[0].removeprefix("reader").removesuffix("@example.com"))
        assert message["Subject"] == f"Hello Reader {i}"
        text, html = message.iter_parts()
        assert text.get_content().strip() == f"Dear Reader {i}, your code is {i}."
        assert html.get_content().strip() == f"<p>Dear Reader {i}, your code is <b>{i}</b>.</p>"
        seen.add(i)
    assert seen == set(range(10_000))
    print(f"\n10,000-recipient batch: intake {accepted_in:.1f} s, sent in {sent_in:.1f} s")
    assert sent_in < 90


def _done(client, auth, batch_id: int) -> dict | None:
    body = client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()
    return body if body["status"] == "DONE" else None


@pytest.mark.slow
def test_variables_are_escaped_in_html_and_a_template_that_cannot_render_fails_the_job(
    client, auth, env, smtp_server
):
    people = [
        {"to": "ann@example.com", "vars": {"name": "<script>alert(1)</script>", "code": "&"}},
        {"to": "bob@example.com", "vars": {"name": "Bob", "code": 2}},
    ]
    batch_id = accepted_batch(client, auth, recipients=people)["id"]
    ann, bob = jobs_of(batch_id)
    # Variables changed after intake (as an operator's mistake might): the render now fails.
    db.session.execute(
        update(EmailJob).where(EmailJob.job_id == bob.job_id).values(template_vars={"code": 2})
    )
    db.session.commit()

    with infra.running_worker(env):
        infra.wait_until(lambda: _done(client, auth, batch_id), 30, 0.2, "the batch to be DONE")

    [received] = smtp_server.messages
    text, html = parsed(received).iter_parts()
    assert text.get_content().strip() == "Dear <script>alert(1)</script>, your code is &."
    assert html.get_content().strip() == (
        "<p>Dear &lt;script&gt;alert(1)&lt;/script&gt;, your code is <b>&amp;</b>.</p>"
    )
    ann, bob = jobs_of(batch_id)
    assert (ann.status, bob.status) == ("SENT", "FAILED")
    assert bob.last_error == "bad_data: template text: missing variable: 'name' is undefined"
    assert bob.attempts == 0, "no provider was tried"


@pytest.mark.slow
def test_after_cancel_only_the_jobs_in_flight_are_still_sent(
    app, client, auth, env, settings, smtp_server
):
    smtp_server.latency_seconds = 0.02  # every reply waits: the batch takes seconds to send
    # Small chunks for the API and the worker, so a slot holds few jobs at a time.
    app.extensions["massmailer.settings"] = replace(settings, chunk_size=10)
    env = {**env, "MASSMAILER_CHUNK_SIZE": "10"}
    batch_id = accepted_batch(client, auth, recipients=recipients(400))["id"]

    with infra.running_worker(env, concurrency=2):
        infra.wait_until(lambda: smtp_server.message_count >= 30, 30, 0.05, "sending to start")
        body = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth).get_json()
        infra.wait_until(
            lambda: (
                client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()["counts"]["PENDING"]
                == 0
            ),
            30,
            0.1,
            "the jobs in flight to finish",
        )
        time.sleep(1)  # anything still queued reaches the worker and must be skipped

    final = client.get(f"/v1/batches/{batch_id}", headers=auth).get_json()["counts"]
    assert body["in_flight"] <= 2 * 10, "at most one chunk per worker slot is claimed"
    # Jobs of a chunk in flight whose send had not started (all sessions busy) come back and
    # are cancelled then, so more may end CANCELLED than the cancel itself took.
    assert final["CANCELLED"] >= body["cancelled"] > 0
    assert final["SENT"] <= body["counts"]["SENT"] + body["in_flight"]
    assert final["SENT"] + final["CANCELLED"] == 400
    assert smtp_server.message_count == final["SENT"]


@pytest.mark.slow
def test_a_job_in_flight_at_cancel_that_needs_a_retry_is_cancelled_not_sent_later(
    client, auth, env, smtp_server
):
    from massmailer.testing.smtp_server import Rule

    # Each reply waits, so the first message is still in flight when the cancel lands; its 451
    # would normally send it to a delay tier and out again ten seconds later.
    smtp_server.latency_seconds = 0.5
    smtp_server.set_rules([Rule("DATA", 451, "4.3.0 try later")])
    batch_id = accepted_batch(client, auth, recipients=recipients(2))["id"]

    with infra.running_worker(env, concurrency=1):
        infra.wait_until(lambda: any(j.claim_token for j in jobs_of(batch_id)), 20, 0.05, "a claim")
        body = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth).get_json()
        infra.wait_until(
            lambda: all(j.status != "PENDING" for j in jobs_of(batch_id)),
            30,
            0.2,
            "every job of the batch to end",
        )
        smtp_server.set_rules([])
        time.sleep(12)  # past the 10 s tier: a retry that slipped through would arrive now

    assert body["in_flight"] >= 1
    assert {j.status for j in jobs_of(batch_id)} == {"CANCELLED"}
    assert smtp_server.message_count == 0


def test_a_subject_whose_renders_outlast_the_budget_is_refused_naming_it(app, settings):
    from massmailer.batches import intake as batch_intake

    request = batch_intake.parse_batch_request(
        {"template": {"subject": "Hi {{ name|upper }}", "text": "x"}, "recipients": recipients(3)},
        default_from="sender@example.com",
        max_body_bytes=10_000,
        max_recipients=10,
    )
    # The clock reads: the start, then after each recipient; the second is past the budget.
    ticks = iter([0.0, 1.0, batch_intake.SUBJECT_BUDGET_SECONDS + 1])

    with pytest.raises(batch_intake.ValidationError) as refused:
        screening = batch_intake.screen(
            db.session, request, settings=settings, monotonic=lambda: next(ticks)
        )
        list(screening.accepted())

    assert refused.value.field == "template.subject"
    assert "takes too long" in refused.value.message
