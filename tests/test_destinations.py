"""Destination groups: which recipients share a limit, how it is configured, how a sender waits."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random

import pytest

from massmailer.config import ConfigError, load_destinations, parse_provider
from massmailer.delivery.destinations import DestinationLimit, default_destinations
from massmailer.delivery.limits import MemoryLimits
from massmailer.delivery.picker import ProviderPicker
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.providers.pool import PoolRegistry
from massmailer.delivery.sending import NEAR_WAIT_SECONDS, JobSender, SendWindow
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from tests.test_after_a_250 import MESSAGE, job

GROUPS = default_destinations().groups
GMAIL_THROTTLE = Rule(
    "DATA", 421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", times=1
)


@pytest.mark.parametrize(
    ("recipient", "group"),
    [
        ("a@gmail.com", "google"),
        ("a@GoogleMail.COM", "google"),  # domains are case-insensitive
        ("a@gmail.com.", "google"),  # a fully qualified name's trailing dot
        ("a@yahoo.com", "yahoo"),
        ("a@yahoo.co.uk", "yahoo"),  # yahoo.*: any public suffix
        ("a@yahoo.com.br", "yahoo"),
        ("a@aol.com", "yahoo"),
        ("a@outlook.com", "microsoft"),
        ("a@hotmail.fr", "microsoft"),
        ("a@live.com", "microsoft"),
        ("a@msn.com", "microsoft"),
        ("a@example.com", None),
        ("a@mail.gmail.com", None),  # exact domains only: a subdomain is another host
        ("a@yahoomail.com", None),  # yahoo.* wants the dot
        ("a@yahoo.", None),
        ("a@yahoo.a.b.c.d", None),  # not a public suffix: at most three labels after the name
        ("a@notgmail.com", None),
    ],
)
def test_a_recipient_belongs_to_the_group_of_its_domain(recipient, group):
    assert GROUPS.group_of(recipient) == group


def limits_of(**environ: str):
    return load_destinations(environ)


def test_without_limits_no_recipient_is_limited():
    assert limits_of().limit_for("a@gmail.com") is None


def test_a_limited_group_applies_to_its_recipients_only():
    destinations = limits_of(MASSMAILER_DESTINATION_LIMITS='{"google": {"rate_per_second": 5}}')

    assert destinations.limit_for("a@gmail.com") == DestinationLimit("google", 5.0)
    assert destinations.limit_for("a@yahoo.com") is None
    subject = destinations.limit_for("a@googlemail.com").rate_subject
    assert (subject.name, subject.rate_per_second, subject.rate_per_day) == (
        "~dest:google",
        5,
        None,
    )


def test_limits_may_be_given_as_yaml():
    destinations = limits_of(MASSMAILER_DESTINATION_LIMITS="yahoo: {rate_per_second: 2.5}")
    assert destinations.limit_for("a@yahoo.fr") == DestinationLimit("yahoo", 2.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"gogle": {"rate_per_second": 5}}', "MASSMAILER_DESTINATION_LIMITS.gogle: unknown group"),
        ('{"google": {"rate_per_second": 0}}', ".google: 'rate_per_second' must be a number above"),
        ('{"google": {"rate_per_second": "5"}}', ".google: 'rate_per_second' must be a number"),
        ('{"google": {"rate_per_second": true}}', ".google: 'rate_per_second' must be a number"),
        ('{"google": {"rate": 5}}', ".google: unknown field(s) ['rate']"),
        ('{"google": 5}', ".google must be an object"),
        ('[{"google": 5}]', "MASSMAILER_DESTINATION_LIMITS must be an object"),
    ],
)
def test_a_malformed_limit_stops_start_up_naming_the_field(raw, message):
    with pytest.raises(ConfigError) as error:
        limits_of(MASSMAILER_DESTINATION_LIMITS=raw)
    assert message in str(error.value)


def test_the_unknown_group_error_lists_the_groups():
    with pytest.raises(ConfigError, match=r"the groups are google, microsoft, yahoo\)"):
        limits_of(MASSMAILER_DESTINATION_LIMITS='{"comcast": {"rate_per_second": 1}}')


def test_an_operators_file_adds_groups_and_replaces_a_groups_domains(tmp_path):
    groups = tmp_path / "groups.yaml"
    groups.write_text("groups:\n  comcast: [comcast.net]\n  google: [gmail.com]\n")

    destinations = limits_of(
        MASSMAILER_DESTINATION_GROUPS_FILE=str(groups),
        MASSMAILER_DESTINATION_LIMITS='{"comcast": {"rate_per_second": 1}, "google": '
        '{"rate_per_second": 9}}',
    )

    assert destinations.limit_for("a@comcast.net") == DestinationLimit("comcast", 1.0)
    assert destinations.limit_for("a@gmail.com") == DestinationLimit("google", 9.0)
    assert destinations.limit_for("a@googlemail.com") is None  # google's list was replaced
    assert destinations.groups.group_of("a@yahoo.de") == "yahoo"  # the others stay


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"groups": {"corp": ["corp.example", "gmail.com"]}}, "gmail.com is in two groups"),
        ({"groups": {"corp": ["*.corp.example"]}}, "'*.corp.example' is neither a domain nor"),
        ({"groups": {"corp": "corp.example"}}, "groups.corp must be a list of domains"),
        ({"groups": {"Corp Mail": ["corp.example"]}}, "a group name is lowercase"),
        ({"corp": ["corp.example"]}, "must be an object {'groups'"),
    ],
)
def test_a_malformed_groups_file_stops_start_up_naming_the_file(tmp_path, document, message):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps(document))

    with pytest.raises(ConfigError) as error:
        limits_of(MASSMAILER_DESTINATION_GROUPS_FILE=str(groups))

    assert str(error.value).startswith("MASSMAILER_DESTINATION_GROUPS_FILE")
    assert message in str(error.value)


def test_an_unreadable_groups_file_is_named():
    with pytest.raises(ConfigError, match="MASSMAILER_DESTINATION_GROUPS_FILE: cannot read"):
        limits_of(MASSMAILER_DESTINATION_GROUPS_FILE="/nonexistent/groups.json")


def test_a_provider_may_not_take_a_destination_schedules_name():
    with pytest.raises(ConfigError, match="'name' must not start with '~dest:'"):
        parse_provider({"name": "~dest:google", "host": "h", "port": 25}, "P[0]")


class Sender:
    """A JobSender on in-process limits against a real SMTP server, with one Google limit."""

    def __init__(self, server: FaultSMTPServer, google_rate: float, provider_rate: float):
        self.limits = MemoryLimits()
        self.pools = PoolRegistry(slots=self.limits, maintain_every_seconds=None)
        self.provider = ProviderConfig(
            "relay", "127.0.0.1", server.port, timeout_seconds=5, rate_per_second=provider_rate
        )
        destinations = limits_of(
            MASSMAILER_DESTINATION_LIMITS=json.dumps({"google": {"rate_per_second": google_rate}})
        )
        picker = ProviderPicker([self.provider], self.limits, random.Random(1))
        self.sender = JobSender(
            picker, self.limits, self.pools, rate_wait_seconds=5, destinations=destinations
        )
        self.window = SendWindow(may_start=lambda needed: None, deadline_seconds=5)

    def send(self, job_id: int, recipient: str):
        claimed = dataclasses.replace(job(job_id), recipient=recipient)
        return self.sender.send(claimed, "b@massmailer.test", MESSAGE, self.window)


def test_a_far_destination_slot_sends_the_job_to_a_tier_uncharged_and_spends_no_provider_slot():
    with FaultSMTPServer() as server:
        s = Sender(server, google_rate=0.1, provider_rate=1)  # one Gmail send per 10 s
        first = s.send(1, "a@gmail.com")
        provider_tat_after_first = s.limits._tat["relay"]

        second = s.send(2, "b@gmail.com")

        # The destination was refused first: the provider's schedule did not move.
        assert s.limits._tat["relay"] == provider_tat_after_first
        other = s.send(3, "c@example.com")  # the provider's next slot is still free for it
        s.pools.close_all()

    assert first.delivered is not None and other.delivered is not None
    assert second.delivered is None and second.attempts == [] and second.charged == 0
    assert NEAR_WAIT_SECONDS < second.wait_seconds <= 10
    assert [m.rcpt_tos for m in server.messages] == [["a@gmail.com"], ["c@example.com"]]


def test_a_send_waits_for_the_later_of_the_destination_and_provider_slots():
    with FaultSMTPServer() as server:
        s = Sender(server, google_rate=4, provider_rate=1000)
        results = [s.send(i, f"r{i}@gmail.com") for i in range(5)]
        s.pools.close_all()

    assert all(r.delivered is not None for r in results)
    times = [m.received_at for m in server.messages]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2, gaps  # 4/s: a quarter second apart, minus scheduling jitter


def test_a_throttle_reply_to_a_limited_group_cuts_that_groups_rate():
    with FaultSMTPServer() as server:
        server.set_rules([GMAIL_THROTTLE])
        s = Sender(server, google_rate=10, provider_rate=1000)
        limit = DestinationLimit("google", 10.0)

        s.send(1, "a@gmail.com")
        s.pools.close_all()

    health = s.limits.snapshot([limit.rate_subject])["~dest:google"]
    assert health["effective_rate"] == pytest.approx(5.0)  # AIMD: halved by the throttle
