"""MASSMAILER_DKIM_KEYS and a provider's dkim_exclude_headers are checked at start-up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from massmailer.config import ConfigError, load_settings
from tests.dkim_keys import make_keys, pem
from tests.infra import ROOT

BASE = {
    "DATABASE_URL": "postgresql://db/mm",
    "BROKER_URL": "amqp://guest:guest@mq//",
    "MASSMAILER_SECRET_KEY": "k" * 32,
}
KEYS = make_keys("example.com")
RSA_PEM = pem(KEYS.rsa.private_key)
ED_PEM = pem(KEYS.ed25519.private_key)


def settings_with(entries: list[dict], **env: str):
    return load_settings({**BASE, "MASSMAILER_DKIM_KEYS": json.dumps(entries), **env})


def test_keys_from_a_file_and_from_an_environment_variable(tmp_path):
    key_file = tmp_path / "s1.pem"
    key_file.write_text(RSA_PEM)
    entries = [
        {"domain": "Example.COM", "selector": "s1", "private_key_file": str(key_file)},
        {"domain": "example.com", "selector": "e1", "private_key_env": "ED_KEY"},
    ]

    settings = settings_with(entries, ED_KEY=ED_PEM)

    rsa_key, ed_key = settings.dkim_keys
    assert (rsa_key.domain, rsa_key.selector, rsa_key.algorithm) == (
        "example.com",
        "s1",
        "rsa-sha256",
    )
    assert (ed_key.selector, ed_key.algorithm) == ("e1", "ed25519-sha256")
    assert "PRIVATE" not in repr(settings.dkim_keys) and "private_key" not in repr(rsa_key)


def test_a_pem_kept_on_one_line_with_backslash_n_is_accepted():
    one_line = RSA_PEM.replace("\n", "\\n")
    entry = {"domain": "example.com", "selector": "s1", "private_key_env": "K"}

    assert settings_with([entry], K=one_line).dkim_keys[0].algorithm == "rsa-sha256"


def test_no_setting_means_no_keys():
    assert load_settings(BASE).dkim_keys == ()


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _encrypted_pem() -> str:
    return KEYS.rsa.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()


RSA = {"domain": "example.com", "selector": "s1", "private_key_env": "RSA_KEY"}
ED = {"domain": "example.com", "selector": "e1", "private_key_env": "ED_KEY"}


@pytest.mark.parametrize(
    ("entries", "env", "message"),
    [
        ({"domain": "x"}, {}, "must be a list"),
        ([{**RSA, "algorithm": "rsa"}], {}, r"\[0\]: unknown field\(s\) \['algorithm'\]"),
        ([{**RSA, "domain": "exa mple.com"}], {}, "'domain' must be an ASCII DNS name"),
        ([{**RSA, "selector": ""}], {}, "'selector' must be an ASCII DNS name"),
        ([{**RSA, "private_key_file": "/x.pem"}], {}, "set one of 'private_key_file' and"),
        ([{"domain": "example.com", "selector": "s1"}], {}, "set one of 'private_key_file' and"),
        ([RSA], {}, r"\[0\] \(example.com\): 'private_key_env' names RSA_KEY, which is not set"),
        (
            [{**RSA, "private_key_env": None, "private_key_file": "/nonexistent/s1.pem"}],
            {},
            "'private_key_file' /nonexistent/s1.pem: No such file",
        ),
        ([RSA], {"RSA_KEY": "not a key"}, "'private_key_env' RSA_KEY is not a PEM private key"),
        ([RSA], {"RSA_KEY": _encrypted_pem()}, "is encrypted"),
        ([RSA], {"RSA_KEY": _ec_pem()}, "neither an RSA nor an Ed25519 key"),
        ([RSA, {**RSA, "selector": "s2"}], {"RSA_KEY": RSA_PEM}, "two rsa-sha256 keys"),
        ([ED], {"ED_KEY": ED_PEM}, "ed25519-sha256 key for example.com needs an RSA key"),
        ([RSA, {**ED, "selector": "s1"}], {"RSA_KEY": RSA_PEM, "ED_KEY": ED_PEM}, "two selectors"),
    ],
)
def test_a_bad_dkim_key_stops_start_up_naming_it(entries, env, message):
    with pytest.raises(ConfigError, match=message) as raised:
        settings_with(entries, **env)

    assert "MASSMAILER_DKIM_KEYS" in str(raised.value)
    assert "BEGIN" not in str(raised.value) and "MII" not in str(raised.value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_an_rsa_key_under_1024_bits_is_refused():
    # cryptography refuses to make one, so openssl does.
    small = subprocess.run(["openssl", "genrsa", "512"], capture_output=True, text=True).stdout

    with pytest.raises(ConfigError, match="512-bit RSA key"):
        settings_with([RSA], RSA_KEY=small)


def provider(**extra) -> str:
    return json.dumps([{"name": "ses", "host": "h", "port": 587, **extra}])


def test_a_provider_names_the_headers_it_rewrites():
    settings = load_settings(
        {**BASE, "MASSMAILER_PROVIDERS": provider(dkim_exclude_headers=["Message-ID", "date"])}
    )

    assert settings.providers[0].dkim_exclude_headers == ("message-id", "date")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("message-id", "must be a list of header names"),
        (["From"], "cannot hold From"),
        (["message_id"], r"\['message_id'\] are not signed anyway"),
    ],
)
def test_a_bad_exclusion_list_stops_start_up(value, message):
    with pytest.raises(ConfigError, match=rf"MASSMAILER_PROVIDERS\[0\] \(ses\): .*{message}"):
        load_settings({**BASE, "MASSMAILER_PROVIDERS": provider(dkim_exclude_headers=value)})


def test_a_process_with_a_bad_dkim_key_refuses_to_start():
    env = {
        **BASE,
        "PATH": "/usr/bin:/bin",
        "MASSMAILER_DKIM_KEYS": json.dumps([RSA]),
        "RSA_KEY": "-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert result.returncode != 0
    assert "MASSMAILER_DKIM_KEYS[0] (example.com): 'private_key_env' RSA_KEY is not a PEM" in (
        result.stderr
    )
    assert "nonsense" not in result.stderr
