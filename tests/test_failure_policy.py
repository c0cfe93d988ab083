"""What follows a failed try, as a table."""

from __future__ import annotations

import random

import pytest

from massmailer.config import load_settings
from massmailer.delivery.failure_policy import FailNow, RetryLater, after_failure
from massmailer.delivery.providers.base import FailureKind, SendError

SETTINGS = load_settings(
    {"MASSMAILER_MAX_ATTEMPTS": "4", "MASSMAILER_BACKOFF_BASE_SECONDS": "10"},
    require_services=False,
)


@pytest.mark.parametrize(
    ("kind", "code", "enhanced", "attempts_after", "expected"),
    [
        (FailureKind.PERMANENT_RECIPIENT, 550, "5.1.1", 1, FailNow),
        (FailureKind.BAD_DATA, 552, "5.3.4", 1, FailNow),
        (FailureKind.TRANSIENT, 451, "4.3.0", 1, RetryLater),
        (FailureKind.TRANSIENT, 451, "4.3.0", 3, RetryLater),
        (FailureKind.TRANSIENT, 451, "4.3.0", 4, FailNow),
        (FailureKind.PROVIDER_FAULT, 535, "5.7.8", 1, RetryLater),
        (FailureKind.PROVIDER_FAULT, None, None, 4, FailNow),
    ],
)
def test_the_decision_follows_the_kind_and_the_attempts(
    kind, code, enhanced, attempts_after, expected
):
    error = SendError(kind, "reply text", smtp_code=code, enhanced=enhanced)

    decision = after_failure(error, "ses", attempts_after, SETTINGS, random.Random(1))

    assert type(decision) is expected
    assert "ses" in decision.reason and "reply text" in decision.reason


def test_only_a_recipient_bounce_suppresses():
    bounce = SendError(FailureKind.PERMANENT_RECIPIENT, "no such user", 550, "5.1.1")
    bad = SendError(FailureKind.BAD_DATA, "too big", 552, "5.3.4")

    assert after_failure(bounce, "a", 1, SETTINGS, random.Random(1)).suppress is True
    assert after_failure(bad, "a", 1, SETTINGS, random.Random(1)).suppress is False


@pytest.mark.parametrize(("attempts_after", "tier"), [(1, 10), (2, 60), (3, 60)])
def test_retries_wait_in_the_tier_at_least_as_long_as_the_backoff(attempts_after, tier):
    error = SendError(FailureKind.TRANSIENT, "later", 451, "4.3.0")

    decision = after_failure(error, "a", attempts_after, SETTINGS, random.Random(7))

    assert decision.tier_seconds == tier


def test_running_out_of_attempts_says_so_and_keeps_the_last_error():
    error = SendError(FailureKind.TRANSIENT, "greylisted", 451, "4.7.1")

    decision = after_failure(error, "ses", 4, SETTINGS, random.Random(1))

    assert decision.reason.startswith("max attempts reached; last: transient: ses: 451 4.7.1")


@pytest.mark.parametrize("attempts_after", [1, 4, 40])
def test_a_message_never_sent_comes_back_soon_and_uncharged_whatever_its_attempts(
    attempts_after,
):
    error = SendError(FailureKind.NOT_SENT, "connection dropped before its data")

    decision = after_failure(error, "ses", attempts_after, SETTINGS, random.Random(1))

    assert isinstance(decision, RetryLater)
    assert decision.charge is False and decision.possible_duplicate is False
    assert decision.tier_seconds == min(SETTINGS.retry_tiers_seconds)


def test_an_unknown_outcome_is_retried_charged_and_flagged_as_a_possible_duplicate():
    error = SendError(FailureKind.UNKNOWN_OUTCOME, "no reply to the final dot")

    retried = after_failure(error, "ses", 1, SETTINGS, random.Random(1))
    exhausted = after_failure(error, "ses", 4, SETTINGS, random.Random(1))

    assert isinstance(retried, RetryLater)
    assert retried.charge is True and retried.possible_duplicate is True
    assert retried.reason.startswith("unknown_outcome: ses:")
    assert isinstance(exhausted, FailNow) and exhausted.possible_duplicate is True


def test_ordinary_failures_are_charged_and_not_flagged():
    decision = after_failure(
        SendError(FailureKind.TRANSIENT, "later", 451, "4.3.0"), "a", 1, SETTINGS, random.Random(1)
    )

    assert decision.charge is True and decision.possible_duplicate is False
