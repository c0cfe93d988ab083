"""`flask --app wsgi api-key create|revoke` as an operator runs it, in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.infra import ROOT

pytestmark = pytest.mark.integration


def flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_created_key_is_printed_alone_on_the_last_line_and_works_until_revoked(app, client, env):
    created = flask(env, "api-key", "create", "newsletter")

    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("mm_") and " " not in key
    headers = {"Authorization": f"Bearer {key}"}
    payload = {"to": "a@example.com", "subject": "s", "text": "t"}
    assert client.post("/v1/emails", json=payload, headers=headers).status_code == 202

    revoked = flask(env, "api-key", "revoke", "newsletter")

    assert revoked.returncode == 0, revoked.stderr
    assert client.post("/v1/emails", json=payload, headers=headers).status_code == 401


def test_a_duplicate_name_or_unknown_key_is_a_clear_error(app, env):
    assert flask(env, "api-key", "create", "twice").returncode == 0

    again = flask(env, "api-key", "create", "twice")
    unknown = flask(env, "api-key", "revoke", "nobody")

    assert again.returncode != 0 and "already exists" in again.stderr
    assert unknown.returncode != 0 and "no active key named 'nobody'" in unknown.stderr


def test_a_key_can_be_created_with_scopes_sender_domains_and_quotas(app, client, env):
    from massmailer.extensions import db
    from massmailer.models import ApiKey

    created = flask(
        env,
        "api-key",
        "create",
        "reader",
        "--scope",
        "read",
        "--scope",
        "suppressions",
        "--sender-domain",
        "Shop.Example",
        "--rate",
        "5",
        "--recipients-per-day",
        "1000",
    )

    assert created.returncode == 0, created.stderr
    headers = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
    payload = {"to": "a@example.com", "subject": "s", "text": "t"}
    assert client.post("/v1/emails", json=payload, headers=headers).status_code == 403
    assert client.get("/v1/suppressions", headers=headers).status_code == 200
    db.session.expire_all()
    key = db.session.query(ApiKey).filter_by(name="reader").one()
    assert (key.scopes, key.sender_domains) == ("read suppressions", ["shop.example"])
    assert (key.rate_per_second, key.recipients_per_day) == (5.0, 1000)


def test_an_unknown_scope_is_refused_by_the_command(app, env):
    refused = flask(env, "api-key", "create", "x", "--scope", "root")

    assert refused.returncode != 0 and "root" in refused.stderr
