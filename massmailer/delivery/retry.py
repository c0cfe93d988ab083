"""Pure retry policy: classify an SMTP failure, compute the backoff, pick the delay tier."""

from __future__ import annotations

import bisect
import random
import re
from typing import Literal

from massmailer.delivery.providers.base import FailureKind

Stage = Literal["connect", "helo", "auth", "mail", "rcpt", "data"]
STAGES: tuple[str, ...] = ("connect", "helo", "auth", "mail", "rcpt", "data")

# The delay-tier queues the broker declares; a retry waits in the smallest one that is long enough.
DELAY_TIERS_SECONDS: tuple[int, ...] = (10, 60, 300, 1800, 7200)

# A try that failed this way cost no attempt: nothing of the message reached the provider (its
# envelope was chained behind another message's final dot when the connection dropped), or the
# provider asked us to slow down (the job waits for capacity, as for a rate limit of ours).
UNCHARGED_KINDS = frozenset({FailureKind.NOT_SENT, FailureKind.THROTTLED})
# A try that failed this way may have delivered the message: the final dot went out and no reply
# came back. A retry may send it twice; it is retried all the same (losing mail is worse, and
# the Message-ID is stable so receivers can de-duplicate), and counted as a possible duplicate.
POSSIBLE_DUPLICATE_KINDS = frozenset({FailureKind.UNKNOWN_OUTCOME})


def charges_attempt(kind: FailureKind) -> bool:
    """Tell whether a failed try of this kind counts toward the job's max attempts."""
    return kind not in UNCHARGED_KINDS


def may_have_delivered(kind: FailureKind) -> bool:
    """Tell whether the provider may hold the message despite the failure (a duplicate risk)."""
    return kind in POSSIBLE_DUPLICATE_KINDS


# RFC 3463: class.subject.detail, class 2/4/5, subject and detail 1-3 digits. The lookarounds keep
# an IP address in the text ("client 5.10.20.30 blocked") from passing for a status code.
_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")

_P = FailureKind.PERMANENT_RECIPIENT
_F = FailureKind.PROVIDER_FAULT
_B = FailureKind.BAD_DATA

# Enhanced codes whose meaning does not depend on the stage.
_BY_SUBJECT_DETAIL: dict[str, FailureKind] = {
    "1.3": _B,  # bad recipient address syntax: an address our validation let through, not a bounce
    "1.7": _F,  # bad sender address syntax: MAIL FROM is our configured bounce address
    "1.8": _F,  # bad sender's system address: same
    "2.3": _B,  # message longer than the administrative limit
    "3.4": _B,  # message too big for the system: no provider will take these bytes either
}

# RFC 7293: the mailbox or domain changed owner since the address was collected.
_RECIPIENT_POLICY = frozenset({"7.17", "7.18"})


def classify(smtp_code: int | None, enhanced: str | None, *, stage: Stage) -> FailureKind:
    """Classify a failed SMTP exchange by its reply code, enhanced status code and stage."""
    if stage not in STAGES:
        raise ValueError(f"unknown SMTP stage: {stage!r}")
    # The basic code decides permanence (RFC 5321 4.2.1); the enhanced code only refines what
    # a permanent failure is about. No code at all means no reply: a timeout or a reset.
    reply_class = smtp_code // 100 if smtp_code is not None else _enhanced_class(enhanced)
    if reply_class != 5:
        # 4xx is transient by definition. A 2xx/3xx reported as a failure, or smtplib's -1 for an
        # unreadable reply, is a confused exchange: the session is dropped and the job retried.
        return FailureKind.TRANSIENT
    by_enhanced = _classify_enhanced(enhanced, stage)
    if by_enhanced is not None:
        return by_enhanced
    return _classify_basic(smtp_code, stage)


def _enhanced_class(enhanced: str | None) -> int | None:
    return int(enhanced[0]) if enhanced and enhanced[0] in "245" else None


def _classify_enhanced(enhanced: str | None, stage: str) -> FailureKind | None:
    """Classify a 5xx by its enhanced code; None when only the basic code can tell."""
    if not enhanced or _ENHANCED.fullmatch(enhanced) is None:
        return None
    subject_detail = enhanced.split(".", 1)[1]
    subject = subject_detail.split(".")[0]
    about_recipient = stage in ("rcpt", "data")
    if subject_detail in _BY_SUBJECT_DETAIL:
        return _BY_SUBJECT_DETAIL[subject_detail]
    if subject in ("1", "2", "4"):
        # Addressing, mailbox status and routing (5.1.1 unknown user, 5.1.10 null MX, 5.2.1
        # disabled, 5.2.2 full, 5.4.4 unroutable domain) are about the recipient once we are past
        # MAIL; at MAIL or before they can only be about our sender or account.
        return _P if about_recipient else _F
    if subject == "3":
        return _F  # the provider's own mail system
    if subject == "6":
        return _B  # media: the message content cannot be carried as built
    if subject == "7":
        # Security and policy (5.7.0/5.7.1 refused, 5.7.8 bad credentials, 5.7.9 weak mechanism,
        # TLS required) judge our account or reputation. 5.7.1 at RCPT is most often a relay
        # refusal: calling it a bounce would suppress every recipient of a misconfigured
        # account, while calling it a provider fault only costs a retry elsewhere.
        return _P if about_recipient and subject_detail in _RECIPIENT_POLICY else _F
    return None  # 5.0.x (other) and 5.5.x (protocol): the basic code is more telling


def _classify_basic(smtp_code: int | None, stage: str) -> FailureKind:
    """Classify a 5xx that carries no telling enhanced code."""
    if stage == "rcpt":
        if smtp_code in (550, 551, 552, 553):
            # 550 unavailable, 551 not local, 552 over its storage, 553 name not allowed.
            return _P
        if smtp_code == 501:
            return _B  # syntax error in the RCPT argument: the address itself is malformed
        # 554 here is Postfix's bare relay refusal; 530 asks for auth; 500/502/503 are protocol
        # errors: all say more about the provider than about this address.
        return _F
    if stage == "data" and smtp_code == 552:
        return _B  # exceeded storage allocation: the message is too big
    # At connect/helo/auth/mail every 5xx is about us (554 no service, 530/535 auth, sender
    # refused). At DATA a bare 554 is how SES refuses an unverified sender or a paused account.
    return _F


def parse_enhanced(text: str) -> str | None:
    """Return the first RFC 3463 enhanced status code ("5.1.1") in a reply text, or None."""
    match = _ENHANCED.search(text)
    return match.group(1) if match else None


def backoff_delay(
    attempt: int,
    *,
    base_seconds: float,
    cap_seconds: float,
    jitter: float,
    rng: random.Random,
) -> float:
    """Return the delay before retry number `attempt` (1-based): capped exponential, jittered.

    `jitter` is the fraction of the delay that is random: 0 gives exactly
    min(cap, base * 2**(attempt-1)), 1 gives "full jitter" (uniform between 0 and that),
    0.2 gives a delay between 80 % and 100 % of it.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
    # Clamp the exponent so a huge attempt number cannot overflow a float before the cap applies.
    delay = min(cap_seconds, base_seconds * 2.0 ** min(attempt - 1, 64))
    return delay - delay * jitter * rng.random()


def pick_tier(delay_seconds: float, tiers: tuple[int, ...] = DELAY_TIERS_SECONDS) -> int:
    """Return the smallest delay tier at least `delay_seconds` long, or the largest tier."""
    if not tiers:
        raise ValueError("no delay tiers")
    ordered = sorted(tiers)
    index = bisect.bisect_left(ordered, delay_seconds)
    return ordered[min(index, len(ordered) - 1)]
