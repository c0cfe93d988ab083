"""Table tests for the pure retry policy: classification, enhanced codes, backoff, delay tiers."""

import random

import pytest

from massmailer.delivery.providers.base import FailureKind
from massmailer.delivery.retry import (
    DELAY_TIERS_SECONDS,
    backoff_delay,
    charges_attempt,
    classify,
    may_have_delivered,
    parse_enhanced,
    pick_tier,
)

T = FailureKind.TRANSIENT
P = FailureKind.PERMANENT_RECIPIENT
F = FailureKind.PROVIDER_FAULT
B = FailureKind.BAD_DATA

CLASSIFY_TABLE = [
    # (code, enhanced, stage, expected, why)
    (421, None, "connect", T, "service closing at greeting"),
    (421, "4.3.2", "mail", T, "service shutting down"),
    (450, "4.2.1", "rcpt", T, "mailbox busy / greylisted"),
    (451, "4.3.0", "data", T, "local error in processing"),
    (452, "4.5.3", "rcpt", T, "too many recipients / insufficient storage"),
    (454, "4.7.0", "auth", T, "temporary authentication failure"),
    (None, None, "data", T, "timeout or connection reset: no reply at all"),
    (None, None, "connect", T, "connect timeout"),
    (-1, None, "mail", T, "smtplib could not read a reply code"),
    (451, "5.1.1", "rcpt", T, "the basic code decides permanence"),
    (550, "5.1.1", "rcpt", P, "unknown user"),
    (550, "5.1.10", "rcpt", P, "recipient domain has a null MX"),
    (550, "5.1.2", "rcpt", P, "bad destination system"),
    (550, None, "rcpt", P, "mailbox unavailable, no enhanced code"),
    (551, None, "rcpt", P, "user not local"),
    (553, None, "rcpt", P, "mailbox name not allowed"),
    (552, None, "rcpt", P, "mailbox over its storage"),
    (550, "5.2.1", "rcpt", P, "mailbox disabled"),
    (552, "5.2.2", "rcpt", P, "mailbox full, arguably permanent"),
    (550, "5.4.4", "rcpt", P, "recipient domain cannot be routed"),
    (550, "5.5.0", "rcpt", P, "a 5.5.0 defers to the basic 550"),
    (550, "5.7.17", "rcpt", P, "mailbox owner has changed (RFC 7293)"),
    (553, "5.1.3", "rcpt", B, "malformed recipient address is bad data, not a bounce"),
    (501, None, "rcpt", B, "syntax error in the RCPT argument"),
    (501, "5.5.2", "rcpt", B, "syntax error in the RCPT argument, enhanced"),
    (554, None, "rcpt", F, "bare relay refusal"),
    (554, "5.7.1", "rcpt", F, "relay access denied"),
    (503, "5.5.1", "rcpt", F, "bad sequence of commands"),
    (530, "5.7.0", "rcpt", F, "authentication required"),
    (530, "5.7.0", "mail", F, "TLS or authentication required"),
    (535, "5.7.8", "auth", F, "bad credentials"),
    (535, None, "auth", F, "bad credentials, no enhanced code"),
    (534, "5.7.9", "auth", F, "mechanism too weak"),
    (550, "5.7.1", "mail", F, "policy refusal of our account"),
    (550, "5.7.0", "mail", F, "policy refusal of our account"),
    (553, "5.1.7", "mail", F, "our sender address is malformed"),
    (553, "5.1.8", "mail", F, "our sender's domain is bad"),
    (550, "5.1.1", "mail", F, "an addressing error at MAIL is about our sender"),
    (550, None, "mail", F, "sender refused"),
    (554, None, "connect", F, "no SMTP service here"),
    (554, "5.7.1", "connect", F, "our IP is blocked"),
    (500, None, "helo", F, "EHLO and HELO refused"),
    (550, "5.3.0", "data", F, "provider's mail system failed"),
    (554, "5.3.2", "mail", F, "system not accepting messages"),
    (552, "5.3.4", "data", B, "message too big for the system"),
    (552, None, "data", B, "exceeded storage allocation at DATA: too big"),
    (552, "5.2.3", "data", B, "message length exceeds administrative limit"),
    (554, "5.6.0", "data", B, "media error in the content"),
    (554, "5.7.1", "data", F, "content refused by policy: the breaker decides"),
    (554, None, "data", F, "SES refuses an unverified sender at DATA"),
    (550, "5.0.0", "data", F, "unspecified failure at DATA"),
    (550, "not-a-code", "rcpt", P, "a malformed enhanced code is ignored"),
]


@pytest.mark.parametrize(("code", "enhanced", "stage", "expected", "why"), CLASSIFY_TABLE)
def test_classify_follows_the_table(code, enhanced, stage, expected, why):
    assert classify(code, enhanced, stage=stage) is expected, why


def test_classify_uses_the_enhanced_class_when_there_is_no_basic_code():
    assert classify(None, "5.1.1", stage="rcpt") is P
    assert classify(None, "4.4.2", stage="data") is T


def test_classify_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="stage"):
        classify(550, None, stage="quit")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 <nobody@example.com>: Recipient address rejected", "5.1.1"),
        ("5.1.10 Recipient address rejected: domain has null MX", "5.1.10"),
        ("550 5.7.1 Relay access denied", "5.7.1"),
        ("2.0.0 Ok: queued as 4F2A1B", "2.0.0"),
        ("4.7.0 Temporary authentication failure", "4.7.0"),
        ("Requested action aborted\n5.3.4 Message too big", "5.3.4"),
        ("Client host 5.10.20.30 blocked", None),
        ("version 1.2.3 of something", None),
        ("Authentication credentials invalid", None),
        ("", None),
    ],
)
def test_parse_enhanced_finds_the_status_code(text, expected):
    assert parse_enhanced(text) == expected


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "expected"),
    [
        (1, 10.0, 7200.0, 10.0),
        (2, 10.0, 7200.0, 20.0),
        (3, 10.0, 7200.0, 40.0),
        (8, 10.0, 7200.0, 1280.0),
        (10, 10.0, 7200.0, 5120.0),
        (11, 10.0, 7200.0, 7200.0),
        (10_000, 10.0, 7200.0, 7200.0),
        (1, 0.5, 3.0, 0.5),
        (4, 0.5, 3.0, 3.0),
    ],
)
def test_backoff_without_jitter_is_capped_exponential(attempt, base, cap, expected):
    delay = backoff_delay(
        attempt, base_seconds=base, cap_seconds=cap, jitter=0.0, rng=random.Random(1)
    )
    assert delay == expected


@pytest.mark.parametrize(("jitter", "low_fraction"), [(1.0, 0.0), (0.25, 0.75), (0.5, 0.5)])
def test_backoff_jitter_stays_within_its_fraction_of_the_delay(jitter, low_fraction):
    rng = random.Random(7)
    delays = [
        backoff_delay(3, base_seconds=10.0, cap_seconds=7200.0, jitter=jitter, rng=rng)
        for _ in range(500)
    ]
    assert all(40.0 * low_fraction <= d <= 40.0 for d in delays)
    assert len(set(delays)) > 400  # it really varies


def test_backoff_is_reproducible_with_a_seeded_rng():
    def run():
        return backoff_delay(
            5, base_seconds=10.0, cap_seconds=7200.0, jitter=1.0, rng=random.Random(42)
        )

    assert run() == run()


@pytest.mark.parametrize(("attempt", "jitter"), [(0, 0.0), (-1, 0.0), (1, -0.1), (1, 1.5)])
def test_backoff_rejects_nonsense(attempt, jitter):
    with pytest.raises(ValueError):
        backoff_delay(
            attempt, base_seconds=1.0, cap_seconds=10.0, jitter=jitter, rng=random.Random()
        )


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0.0, 10),
        (3.2, 10),
        (10.0, 10),
        (10.01, 60),
        (60.0, 60),
        (61.0, 300),
        (299.0, 300),
        (1000.0, 1800),
        (1800.0, 1800),
        (5000.0, 7200),
        (7200.0, 7200),
        (86_400.0, 7200),
    ],
)
def test_pick_tier_takes_the_smallest_tier_long_enough(delay, expected):
    assert pick_tier(delay) == expected


def test_pick_tier_accepts_other_tiers_in_any_order():
    assert pick_tier(45, tiers=(120, 30, 60)) == 60
    assert pick_tier(500, tiers=(120, 30, 60)) == 120


def test_pick_tier_needs_tiers():
    with pytest.raises(ValueError):
        pick_tier(5, tiers=())


def test_default_tiers_match_the_design():
    assert DELAY_TIERS_SECONDS == (10, 60, 300, 1800, 7200)


@pytest.mark.parametrize(
    ("kind", "charged", "may_duplicate"),
    [
        (FailureKind.NOT_SENT, False, False),
        (FailureKind.UNKNOWN_OUTCOME, True, True),
        (FailureKind.TRANSIENT, True, False),
        (FailureKind.PERMANENT_RECIPIENT, True, False),
        (FailureKind.PROVIDER_FAULT, True, False),
        (FailureKind.BAD_DATA, True, False),
    ],
)
def test_only_an_unsent_try_is_free_and_only_an_unknown_outcome_may_duplicate(
    kind, charged, may_duplicate
):
    assert charges_attempt(kind) is charged
    assert may_have_delivered(kind) is may_duplicate
