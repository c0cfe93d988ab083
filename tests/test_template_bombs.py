"""Template bombs: refused at intake within a second of CPU, failed as bad data at send time,
and the service keeps accepting and sending normal email right after each."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import EmailJob
from tests import infra

pytestmark = pytest.mark.integration

XS = [0] * 3000  # a 3,000-element variable (6 KB of JSON)
DOUBLING = "{% set a = 'xxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 30 + "{{ a|length }}"
BOMBS = {
    "string doubling with ~": DOUBLING,
    "string doubling with +": DOUBLING.replace(" ~ ", " + "),
    "nested loops over a 3,000-element variable": (
        "{% for a in xs %}{% for b in xs %}{{ '' }}{% endfor %}{% endfor %}done"
    ),
    "nested loops whose filter skips every item": (
        "{% for a in xs %}{% for b in xs if b == 1 %}{% endfor %}{% endfor %}done"
    ),
    "a captured block doubled": (
        "{% set x %}{{ xs|join }}{% endset %}"
        + "{% set x %}{{ x }}{{ x }}{% endset %}" * 30
        + "{{ x|length }}"
    ),
    "join of one big string repeated": "{{ ([xs|join * 16] * 100000)|join }}",
    "a macro that calls itself twice": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    ),
}


def post_bomb(client, auth, text: str, category: str = "transactional", html: str | None = None):
    template = {"subject": "Hi", "text": text} if html is None else {"subject": "Hi", "html": html}
    payload = {
        "template": template,
        "recipients": [{"to": "victim@example.com", "vars": {"xs": XS}}],
        "category": category,
    }
    return client.post("/v1/batches", json=payload, headers=auth)


def post_normal(client, auth, to: str) -> int:
    payload = {"to": to, "subject": "still here", "text": "a normal email"}
    response = client.post("/v1/emails", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def job(job_id: int) -> EmailJob:
    db.session.expire_all()
    return db.session.scalars(select(EmailJob).where(EmailJob.job_id == job_id)).one()


def received_by(smtp_server, address: str) -> bool:
    return any(address in m.rcpt_tos for m in smtp_server.messages)


@pytest.mark.slow
def test_each_bomb_is_refused_at_intake_within_a_second_and_normal_mail_still_flows(
    client, auth, env, smtp_server
):
    with infra.running_worker(env):
        for i, (name, text) in enumerate(BOMBS.items()):
            started = time.process_time()
            response = post_bomb(client, auth, text)
            cpu = time.process_time() - started

            assert response.status_code == 400, (name, response.get_json())
            error = response.get_json()["error"]
            assert error["field"] == "template.text", (name, error)
            assert "too costly" in error["message"] or "not allowed" in error["message"], name
            assert cpu < 1.0, f"{name}: {cpu:.2f} s of CPU before the answer"

            address = f"after-bomb-{i}@example.com"
            job_id = post_normal(client, auth, address)
            infra.wait_until(
                lambda j=job_id: job(j).status == "SENT", 30, 0.1, f"the mail after {name}"
            )
            assert received_by(smtp_server, address)

    assert not received_by(smtp_server, "victim@example.com")


def test_a_bomb_in_the_html_part_names_that_part(client, auth):
    response = post_bomb(client, auth, "", html=BOMBS["nested loops over a 3,000-element variable"])

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "template.html"


def test_a_recursive_loop_is_refused_at_intake_naming_the_part(client, auth):
    response = post_bomb(client, auth, "{% for x in xs recursive %}{{ loop(xs) }}{% endfor %}")

    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "field": "template.text",
        "message": "not allowed: recursive loops are not allowed",
    }


@pytest.mark.slow
def test_a_bomb_behind_the_real_unsubscribe_url_fails_once_as_bad_data_at_send_time(
    client, auth, env, smtp_server
):
    # Intake renders with a stand-in link; only the real, signed one sets off the loops.
    text = (
        "{% if 'xxxxxxxxxx' not in unsubscribe_url %}"
        "{% for a in xs %}{% for b in xs %}{{ '' }}{% endfor %}{% endfor %}"
        "{% endif %}Hello"
    )
    response = post_bomb(client, auth, text, category="marketing")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == 1
    batch_id = response.get_json()["id"]
    db.session.expire_all()
    bomb_id = db.session.scalars(select(EmailJob.job_id).where(EmailJob.batch_id == batch_id)).one()

    with infra.running_worker(env):
        infra.wait_until(lambda: job(bomb_id).status == "FAILED", 30, 0.2, "the bomb to fail")
        normal_id = post_normal(client, auth, "after-send-bomb@example.com")
        infra.wait_until(lambda: job(normal_id).status == "SENT", 30, 0.2, "the normal mail")

    bomb = job(bomb_id)
    assert bomb.last_error.startswith("bad_data: template text: too costly to render")
    assert bomb.attempts == 0, "failed on its first try, no provider was tried"
    assert not received_by(smtp_server, "victim@example.com")
    assert received_by(smtp_server, "after-send-bomb@example.com")
