"""Throttle replies: classified from the data file, uncharged, and answered by AIMD arithmetic."""

from __future__ import annotations

import json
import random

import pytest

from massmailer.config import ConfigError, load_settings
from massmailer.delivery import failure_policy, retry
from massmailer.delivery.limits import MemoryLimits
from massmailer.delivery.limits.aimd import AimdSettings, AimdState, cut, effective_rate, note_sent
from massmailer.delivery.providers.base import FailureKind, ProviderConfig, SendError
from massmailer.delivery.providers.smtp import SmtpSession
from massmailer.delivery.retry import parse_enhanced
from massmailer.delivery.sending import Attempt, JobResult
from massmailer.delivery.throttle import (
    ThrottleRules,
    builtin_patterns,
    default_rules,
    parse_patterns,
)
from massmailer.testing.smtp_server import FaultSMTPServer, Rule

RULES = default_rules()


def match(reply: str) -> str | None:
    code, text = int(reply[:3]), reply[4:]
    return RULES.match(code, parse_enhanced(text), text)


@pytest.mark.parametrize(
    ("reply", "pattern"),
    [
        ("454 Throttling failure: Maximum sending rate exceeded.", "ses-max-send-rate"),
        ("454 4.7.0 Throttling failure: too many requests", "ses-throttling-4.7.0"),
        (
            "421 4.7.28 [203.0.113.5] Our system has detected an unusual rate of unsolicited "
            "mail originating from your IP address. To protect our users from spam, mail sent "
            "from your IP address has been temporarily rate limited. - gsmtp",
            "gmail-unusual-rate",
        ),
        (
            "450 4.2.1 The user you are trying to contact is receiving mail at a rate that "
            "prevents additional messages from being delivered. - gsmtp",
            "gmail-recipient-rate",
        ),
        (
            "450 4.2.1 The user you are trying to contact is receiving mail too quickly.",
            "gmail-recipient-rate",
        ),
        (
            "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected "
            "volume or user complaints - 4.16.55.1",
            "yahoo-tss04",
        ),
        (
            "451 4.7.500 Server busy. Please try again later from [203.0.113.5]. (S77719)",
            "microsoft-server-busy",
        ),
        (
            "451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to "
            "IP reputation.",
            "microsoft-rate-limited-reputation",
        ),
        ("421 4.7.0 Rate limited, slow down", "generic-rate-limited"),
        ("451 4.7.1 Too many messages, try again later", "generic-rate-limited"),
    ],
)
def test_well_known_throttle_replies_match_a_shipped_pattern(reply, pattern):
    assert match(reply) == pattern


@pytest.mark.parametrize(
    "reply",
    [
        "450 4.2.1 Mailbox temporarily unavailable",  # a busy mailbox, not a rate
        "451 4.3.0 Temporary failure, try again later",
        "421 4.3.2 Service not available, closing transmission channel",
        "452 4.2.2 The email account that you tried to reach is over quota",
        "421 4.7.0 Try again later, closing connection.",  # Gmail: not about the rate
        "550 5.7.1 Rate limited",  # a 5xx is a refusal, never a request to slow down
        "554 Throttling failure: Maximum sending rate exceeded.",
    ],
)
def test_other_replies_are_not_throttles(reply):
    assert match(reply) is None


def test_every_shipped_pattern_names_its_source():
    patterns = builtin_patterns()
    assert len({p.name for p in patterns}) == len(patterns)
    assert all(p.source for p in patterns)


def test_an_operator_file_adds_patterns_after_the_shipped_ones(tmp_path):
    extra = tmp_path / "throttle.yaml"
    extra.write_text(
        "patterns:\n  - name: acme-slow\n    codes: [451]\n    text: 'acme says slow'\n"
    )
    settings = load_settings(
        {"MASSMAILER_THROTTLE_PATTERNS_FILE": str(extra)}, require_services=False
    )

    assert settings.throttle_patterns[-1].name == "acme-slow"
    assert settings.throttle_rules.match(451, None, "ACME says slow down") == "acme-slow"
    assert settings.throttle_rules.match(421, None, "ACME says slow down") is None


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"codes": [421]}, "give 'enhanced' or 'text'"),
        ({"codes": [550], "text": "x"}, "4xx"),
        ({"text": "("}, "not a valid regex"),
        ({"enhanced": "5.7.1"}, "4.7.28"),
        ({"text": "x", "colour": "red"}, "unknown field"),
    ],
)
def test_a_bad_operator_pattern_stops_start_up_naming_the_variable(tmp_path, entry, complaint):
    bad = tmp_path / "throttle.json"
    bad.write_text(json.dumps([entry]))
    with pytest.raises(ConfigError, match="MASSMAILER_THROTTLE_PATTERNS_FILE") as raised:
        load_settings({"MASSMAILER_THROTTLE_PATTERNS_FILE": str(bad)}, require_services=False)
    assert complaint in str(raised.value)


def test_parse_patterns_takes_a_bare_list():
    (pattern,) = parse_patterns([{"enhanced": "4.7.28"}], "here")
    assert ThrottleRules([pattern]).match(421, "4.7.28", "anything") == "here[0]"


@pytest.mark.integration
def test_the_smtp_session_classifies_gmails_throttle_reply_as_throttled():
    reply = "4.7.28 Our system has detected an unusual rate of unsolicited mail"
    with FaultSMTPServer(rules=[Rule("DATA", 421, reply)]) as server:
        session = SmtpSession(ProviderConfig("gmail-mx", "127.0.0.1", server.port))
        session.open()
        with pytest.raises(SendError) as raised:
            session.send("b@example.com", "r@example.org", b"Subject: x\r\n\r\nx\r\n")
        session.close()
    assert raised.value.kind is FailureKind.THROTTLED
    assert (raised.value.smtp_code, raised.value.enhanced) == (421, "4.7.28")


def test_a_throttle_is_retried_soon_and_charges_no_attempt(settings_demo):
    error = SendError(FailureKind.THROTTLED, "421 4.7.28 unusual rate", 421, "4.7.28")
    # Even at the last attempt: a throttle is a wait for capacity, not a failure.
    decision = failure_policy.after_failure(
        error, "gmail-mx", settings_demo.max_attempts, settings_demo, random.Random(0)
    )
    assert isinstance(decision, failure_policy.RetryLater)
    assert decision.charge is False
    assert decision.tier_seconds == min(settings_demo.retry_tiers_seconds)
    assert not retry.charges_attempt(FailureKind.THROTTLED)


def test_throttled_tries_are_recorded_but_not_charged():
    result = JobResult(job=None)  # type: ignore[arg-type]
    result.attempts += [
        Attempt(1, "gmail-mx", "throttled", 421, "4.7.28"),
        Attempt(1, "gmail-mx", "throttled", 421, "4.7.28"),
        Attempt(1, "gmail-mx", "sent", 250),
    ]
    assert result.charged == 1


@pytest.fixture
def settings_demo():
    return load_settings({}, require_services=False)


# --- AIMD arithmetic -----------------------------------------------------------------------

S = AimdSettings(
    decrease=0.5,
    min_factor=0.05,
    cooldown_seconds=10,
    increase_per_second=0.05,
    floor_per_second=1.0,
    cut_spacing_seconds=2,
    max_step_seconds=2,
    estimate_seconds=5,
)


def test_a_throttle_halves_the_rate_once_per_spacing_down_to_the_floor():
    state = cut(AimdState(), 100.0, 20.0, S)
    assert effective_rate(20.0, state) == 10.0
    # The replies to one burst of sends count as one signal.
    assert cut(state, 101.0, 20.0, S).factor == 0.5
    factors = []
    for t in range(102, 122, 2):
        state = cut(state, float(t), 20.0, S)
        factors.append(state.factor)
    assert factors[:3] == [0.25, 0.125, 0.0625]
    assert min(factors) == S.min_factor  # 5 % of the configured rate, never less
    assert effective_rate(20.0, state) == pytest.approx(1.0)


def test_successes_raise_the_rate_additively_after_the_cool_down():
    state = cut(AimdState(), 0.0, 20.0, S)  # factor 0.5 at t=0
    assert note_sent(state, 10, 9.0, S).factor == 0.5  # cooling down: no increase
    factors = []
    for t in range(11, 21):  # a success report every second from t=11
        state = note_sent(state, 20, float(t), S)
        factors.append(round(state.factor, 3))
    # +5 % of the configured rate per second of successful sending, from the cool-down's end.
    assert factors == [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]
    assert state == AimdState(sent_estimate=state.sent_estimate, estimated_at=20.0)


def test_a_late_report_raises_by_at_most_max_step_seconds():
    state = cut(AimdState(), 0.0, 20.0, S)
    assert note_sent(state, 1, 60.0, S).factor == pytest.approx(0.5 + 0.05 * 2)


def test_a_new_throttle_restarts_the_cool_down():
    state = note_sent(cut(AimdState(), 0.0, 20.0, S), 5, 12.0, S)  # 0.6
    state = cut(state, 13.0, 20.0, S)  # 0.3, cooling down until 23
    assert note_sent(state, 5, 22.0, S).factor == pytest.approx(0.3)
    assert note_sent(state, 5, 24.0, S).factor == pytest.approx(0.35)


def test_an_unrated_provider_gets_half_its_recent_rate_or_the_floor():
    state = AimdState()
    for t in range(60):  # 40 sends a second for a minute
        state = note_sent(state, 40, float(t), S)
    assert effective_rate(None, state) is None
    throttled = cut(state, 60.0, None, S)
    assert throttled.base == pytest.approx(40.0, rel=0.15)
    assert effective_rate(None, throttled) == pytest.approx(20.0, rel=0.15)
    # Never sent anything: the floor.
    assert cut(AimdState(), 0.0, None, S).base == S.floor_per_second
    # Restored to the full base, the temporary limit goes: unlimited again.
    for t in range(11, 25):
        throttled = note_sent(throttled, 40, float(60 + t), S)
    assert effective_rate(None, throttled) is None


def test_memory_limits_reserve_at_the_cut_rate():
    limits = MemoryLimits(aimd=S)
    provider = ProviderConfig("relay", "127.0.0.1", 2525, rate_per_second=10.0)

    assert limits.record_throttle(provider) == 5.0
    now = 1_000.0
    waits = [limits.reserve_rate(provider, 5.0, now=now) for _ in range(11)]
    # 5/s: one send now, then one every 0.2 s (the burst is one send at this rate).
    assert waits[-1] == pytest.approx(2.0)
    snapshot = limits.snapshot([provider])["relay"]
    assert (snapshot["effective_rate"], snapshot["rate_factor"]) == (5.0, 0.5)
