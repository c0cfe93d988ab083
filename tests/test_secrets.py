"""No default secrets, key rotation, and provider credentials only over TLS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from massmailer.config import ConfigError, load_settings
from massmailer.unsubscribe import BadToken, UnsubscribeLinks
from tests.infra import ROOT

OLD_KEY = "o" * 40
NEW_KEY = "n" * 40
BASE = {
    "DATABASE_URL": "postgresql://db/mm",
    "BROKER_URL": "amqp://guest:guest@mq//",
    "MASSMAILER_SECRET_KEY": NEW_KEY,
}
URL = "https://mail.example.test"


def settings_with(**env):
    return load_settings({**BASE, **env})


# --- the signing key ------------------------------------------------------------------------


def test_a_service_process_without_a_secret_key_refuses_naming_it():
    env = {k: v for k, v in BASE.items() if k != "MASSMAILER_SECRET_KEY"}

    with pytest.raises(ConfigError, match="MASSMAILER_SECRET_KEY is not set"):
        load_settings(env)


def test_a_short_secret_key_is_refused_without_repeating_it():
    with pytest.raises(ConfigError, match="MASSMAILER_SECRET_KEY must be at least 32") as caught:
        settings_with(MASSMAILER_SECRET_KEY="hunter2")

    assert "hunter2" not in str(caught.value)


def test_the_old_shared_secret_key_alias_is_not_read():
    env = {k: v for k, v in BASE.items() if k != "MASSMAILER_SECRET_KEY"}

    with pytest.raises(ConfigError, match="MASSMAILER_SECRET_KEY"):
        load_settings({**env, "SECRET_KEY": "s" * 40})


def test_only_the_demo_generates_a_key_and_each_process_gets_its_own():
    first = load_settings({}, require_services=False).secret_key
    second = load_settings({}, require_services=False).secret_key

    assert first != second and len(first) >= 32
    assert "insecure" not in first


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-c", "import wsgi"],  # what gunicorn imports
        [sys.executable, "-m", "celery", "-A", "wsgi:celery", "worker", "--pool=solo"],
        [sys.executable, "-m", "celery", "-A", "wsgi:celery", "beat"],
        [sys.executable, "-m", "flask", "--app", "wsgi", "api-key", "create", "x"],
    ],
    ids=["web", "worker", "beat", "operator-command"],
)
def test_every_service_process_refuses_to_start_without_the_key(command):
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
    }

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)

    assert result.returncode != 0
    assert "MASSMAILER_SECRET_KEY is not set" in result.stderr + result.stdout


def test_links_signed_with_a_previous_key_still_verify_after_rotation():
    settings = settings_with(
        MASSMAILER_SECRET_KEY=NEW_KEY, MASSMAILER_SECRET_KEY_PREVIOUS=f" {OLD_KEY} , {'p' * 32}"
    )
    old_token = UnsubscribeLinks(OLD_KEY, URL).token("ann@example.com", 3)
    rotated = UnsubscribeLinks(
        settings.secret_key, URL, previous_keys=settings.previous_secret_keys
    )

    assert settings.previous_secret_keys == (OLD_KEY, "p" * 32)
    assert rotated.read(old_token).address == "ann@example.com"
    # New links are signed with the current key only: the old key alone no longer reads them.
    with pytest.raises(BadToken):
        UnsubscribeLinks(OLD_KEY, URL).read(rotated.token("ann@example.com", 3))
    assert UnsubscribeLinks(NEW_KEY, URL).read(rotated.token("bob@example.com", 4)).job_id == 4


def test_a_link_signed_with_a_key_not_in_the_list_is_refused():
    stranger = UnsubscribeLinks("x" * 40, URL).token("ann@example.com", 3)

    with pytest.raises(BadToken):
        UnsubscribeLinks(NEW_KEY, URL, previous_keys=(OLD_KEY,)).read(stranger)


def test_a_weak_previous_key_is_refused_naming_the_variable():
    with pytest.raises(ConfigError, match="MASSMAILER_SECRET_KEY_PREVIOUS"):
        settings_with(MASSMAILER_SECRET_KEY_PREVIOUS="short")


# --- provider credentials -------------------------------------------------------------------


def provider(**extra) -> str:
    return json.dumps([{"name": "relay", "host": "smtp.example.com", "port": 25, **extra}])


def test_credentials_over_a_plaintext_connection_are_refused_naming_provider_and_tls():
    with pytest.raises(ConfigError) as caught:
        settings_with(MASSMAILER_PROVIDERS=provider(username="u", password="p"))

    message = str(caught.value)
    assert "(relay)" in message and "'tls'" in message
    assert "allow_plaintext_auth" in message


def test_plaintext_auth_is_allowed_only_when_the_entry_opts_in():
    [relay] = settings_with(
        MASSMAILER_PROVIDERS=provider(username="u", password="p", allow_plaintext_auth=True)
    ).providers

    assert (relay.username, relay.password) == ("u", "p")


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_credentials_over_tls_need_no_opt_in(tls):
    [relay] = settings_with(
        MASSMAILER_PROVIDERS=provider(username="u", password="p", tls=tls)
    ).providers

    assert relay.username == "u"


def test_a_provider_without_credentials_may_use_plaintext():
    [relay] = settings_with(MASSMAILER_PROVIDERS=provider()).providers

    assert relay.username is None


def test_the_password_can_come_from_a_file(tmp_path):
    path = tmp_path / "relay.password"
    path.write_text("from-a-file\n")

    [relay] = settings_with(
        MASSMAILER_PROVIDERS=provider(username="u", tls="starttls", password_file=str(path))
    ).providers

    assert relay.password == "from-a-file"


def test_the_password_can_come_from_a_named_environment_variable():
    [relay] = settings_with(
        MASSMAILER_PROVIDERS=provider(username="u", tls="ssl", password_env="RELAY_PASSWORD"),
        RELAY_PASSWORD="from-the-env",
    ).providers

    assert relay.password == "from-the-env"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"password_env": "NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE, which is not set"),
        ({"password_file": "/nonexistent/pw"}, "'password_file' cannot be read"),
        ({"password": "p", "password_env": "X"}, "set only one of"),
        ({"allow_plaintext_auth": "yes"}, "'allow_plaintext_auth' must be true or false"),
    ],
)
def test_a_bad_password_source_stops_start_up_naming_it(extra, message):
    with pytest.raises(ConfigError, match=message):
        settings_with(MASSMAILER_PROVIDERS=provider(username="u", tls="starttls", **extra))


def test_a_password_from_a_file_never_appears_in_the_settings_repr(tmp_path):
    path = tmp_path / "pw"
    path.write_text("very-secret-password")

    settings = settings_with(
        MASSMAILER_PROVIDERS=provider(username="u", tls="ssl", password_file=str(path))
    )

    assert "very-secret-password" not in repr(settings)
    assert "very-secret-password" not in repr(settings.providers[0])
