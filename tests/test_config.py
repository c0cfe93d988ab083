"""Settings are parsed strictly once; a bad or missing one stops start-up naming it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from massmailer.config import ConfigError, load_settings, normalize_database_url
from massmailer.delivery.providers.base import TlsMode
from tests.infra import ROOT

KEY = "k" * 32
BASE = {
    "DATABASE_URL": "postgresql://db/mm",
    "BROKER_URL": "amqp://guest:guest@mq//",
    "MASSMAILER_SECRET_KEY": KEY,
}


def settings_with(**env):
    return load_settings({**BASE, **env})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgresql://u@h/d", "postgresql+psycopg2://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_urls_are_pointed_at_psycopg2(url, expected):
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize("missing", ["DATABASE_URL", "BROKER_URL", "MASSMAILER_SECRET_KEY"])
def test_a_service_process_without_its_urls_refuses_naming_the_setting(missing):
    env = {k: v for k, v in BASE.items() if k != missing}

    with pytest.raises(ConfigError, match=missing):
        load_settings(env)


def test_cloudamqp_url_is_read_when_broker_url_is_unset():
    settings = load_settings(
        {
            "DATABASE_URL": "postgres://h/d",
            "CLOUDAMQP_URL": "amqps://x@y/v",
            "MASSMAILER_SECRET_KEY": KEY,
        }
    )

    assert settings.broker_url == "amqps://x@y/v"
    assert settings.database_url == "postgresql+psycopg2://h/d"


def test_providers_from_json_with_defaults():
    entries = [
        {
            "name": "ses",
            "host": "email-smtp.example.com",
            "port": 587,
            "tls": "starttls",
            "username": "AKIA",
            "password": "s3cret",
            "weight": 3,
            "rate_per_second": 14,
            "max_connections": 5,
            "timeout_seconds": 10,
        },
        {"name": "relay", "host": "10.0.0.5", "port": 25},
    ]

    ses, relay = settings_with(MASSMAILER_PROVIDERS=json.dumps(entries)).providers

    assert (ses.tls, ses.weight, ses.rate_per_second, ses.max_connections) == (
        TlsMode.STARTTLS,
        3,
        14.0,
        5,
    )
    assert (relay.tls, relay.weight, relay.rate_per_second, relay.timeout_seconds) == (
        TlsMode.NONE,
        1,
        None,
        30.0,
    )
    assert "s3cret" not in repr(ses)


def test_providers_from_a_yaml_file(tmp_path):
    path = tmp_path / "providers.yaml"
    path.write_text("- name: a\n  host: smtp.a.example\n  port: 465\n  tls: ssl\n")

    [provider] = settings_with(MASSMAILER_PROVIDERS_FILE=str(path)).providers

    assert (provider.name, provider.port, provider.tls) == ("a", 465, TlsMode.SSL)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("[unclosed, {", "neither JSON nor YAML"),
        ('{"name": "a"}', "must be a list"),
        ('[{"name": "a", "host": "h"}]', r"\[0\] \(a\): 'port' is required"),
        ('[{"name": "a", "host": "h", "port": 99999}]', "'port' must be between"),
        ('[{"name": "a", "host": "h", "port": 25, "tls": "maybe"}]', "'tls' must be"),
        ('[{"name": "a", "host": "h", "port": 25, "weight": "x"}]', "'weight' must be a number"),
        ('[{"name": "a", "host": "h", "port": 25, "colour": 1}]', "unknown field"),
        (
            '[{"name": "a", "host": "h", "port": 25}, {"name": "a", "host": "i", "port": 25}]',
            "unique",
        ),
    ],
)
def test_a_malformed_provider_entry_stops_start_up_naming_it(entries, message):
    with pytest.raises(ConfigError, match=message):
        settings_with(MASSMAILER_PROVIDERS=entries)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MASSMAILER_MAX_ATTEMPTS", "many"),
        ("MASSMAILER_MAX_ATTEMPTS", "0"),
        ("MASSMAILER_CHUNK_SIZE", "1.5"),
        ("MASSMAILER_DEFAULT_FROM", "not an address"),
        ("MASSMAILER_BOUNCE_ADDRESS", "Bounces <b@example.com>"),
        ("MASSMAILER_LEASE_SECONDS", "1000"),
        ("BOUNCE_SMTP_PORT", "70000"),
        ("BOUNCE_SMTP_PORT", "smtp"),
        ("MASSMAILER_INBOUND_TOKEN", "short"),
        ("MASSMAILER_FEEDBACK_ADDRESS", "FBL <fbl@example.com>"),
        ("MASSMAILER_BOUNCE_RATE_PER_SECOND", "0"),
        ("MASSMAILER_SNS_TOPIC_ARNS", "arn:aws:sqs:eu-west-1:123456789012:not-a-topic"),
        ("MASSMAILER_SENDGRID_WEBHOOK_PUBLIC_KEY", "bm90IGEga2V5"),
        ("MASSMAILER_PROVIDER_WEBHOOK_MAX_AGE_SECONDS", "5"),
    ],
)
def test_a_malformed_setting_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        settings_with(**{name: value})


def test_the_bounce_address_defaults_to_the_default_sender():
    settings = settings_with(MASSMAILER_DEFAULT_FROM="News <news@example.com>")

    assert settings.bounce_address == "news@example.com"
    assert settings.message_id_domain == "example.com"


def test_the_inbound_settings_have_defaults_and_the_token_stays_out_of_repr():
    token = "t" * 40
    settings = settings_with(MASSMAILER_INBOUND_TOKEN=token)

    assert (settings.bounce_smtp_port, settings.bounce_max_bytes) == (2525, 2_000_000)
    assert settings.inbound_retention_days == 30
    assert settings.inbound_token == token and token not in repr(settings)


def test_provider_webhooks_are_off_until_configured_and_the_mailgun_key_stays_out_of_repr():
    assert settings_with().sns_topic_arns == ()
    key = "mailgun-" + "k" * 30
    settings = settings_with(
        MASSMAILER_SNS_TOPIC_ARNS="arn:aws:sns:eu-west-1:123456789012:a, "
        "arn:aws-cn:sns:cn-north-1:123456789012:b",
        MASSMAILER_MAILGUN_SIGNING_KEY=key,
    )

    assert settings.sns_topic_arns == (
        "arn:aws:sns:eu-west-1:123456789012:a",
        "arn:aws-cn:sns:cn-north-1:123456789012:b",
    )
    assert settings.provider_webhook_max_age == 300
    assert settings.mailgun_signing_key == key and key not in repr(settings)


def test_the_web_entry_point_refuses_to_start_without_database_url():
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "BROKER_URL": "amqp://guest:guest@127.0.0.1//"},
        timeout=60,
    )

    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
