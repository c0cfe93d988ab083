"""Reading DSNs, ARF complaints and non-standard bounces; classifying them; the signed VERP."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from massmailer.bounces.parse import parse_message, parse_report
from massmailer.bounces.report import Kind, classify
from massmailer.bounces.smtp import TokenBucket
from massmailer.bounces.verp import Mailboxes, Recipient, VerpSigner
from massmailer.delivery.message import verp_sender
from tests.bounce_fixtures import fixture

KEY = "k" * 40


def read(name: str, **values):
    return parse_report(parse_message(fixture(name, **values)))


@pytest.mark.parametrize(
    ("name", "fmt", "kind", "status"),
    [
        ("postfix_hard_5.1.1.eml", "dsn", Kind.HARD_BOUNCE, "5.1.1"),
        ("gmail_hard_5.1.1.eml", "dsn", Kind.HARD_BOUNCE, "5.1.1"),
        ("microsoft_policy_5.7.1.eml", "dsn", Kind.BOUNCE, "5.7.1"),
        ("postfix_delayed_4.4.1.eml", "dsn", Kind.DELAYED, "4.4.1"),
        ("exim_hard_5.1.1.eml", "freeform", Kind.HARD_BOUNCE, "5.1.1"),
        ("arf_abuse.eml", "arf", Kind.COMPLAINT, None),
    ],
)
def test_each_fixture_reads_as_its_kind_with_the_returned_message_id(name, fmt, kind, status):
    report = read(name, rcpt="Gone@Example.org", message_id="<x1@massmailer.test>")

    assert (report.format, report.kind, report.status) == (fmt, kind, status)
    assert report.recipient == "gone@example.org"
    assert report.message_ids == ("<x1@massmailer.test>",)


def test_the_dsn_diagnostic_is_the_remote_servers_words():
    report = read("microsoft_policy_5.7.1.eml")

    assert report.diagnostic.startswith("550 5.7.1 Service unavailable, Client host")
    assert "Spamhaus" in report.diagnostic


def test_an_arf_report_quotes_our_envelope_sender():
    report = read("arf_abuse.eml", verp="bounces+7-aaaaaaaaaa@massmailer.test")

    assert report.action == "abuse"
    assert "bounces+7-aaaaaaaaaa@massmailer.test" in report.senders


def test_an_ordinary_message_is_no_report():
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"

    assert parse_report(parse_message(raw)) is None


def test_malformed_bytes_are_no_report_and_raise_nothing():
    raw = b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n\xff\x00"

    assert parse_report(parse_message(raw)) is None


@pytest.mark.parametrize(
    ("fmt", "action", "status", "kind"),
    [
        ("dsn", "failed", "5.1.1", Kind.HARD_BOUNCE),
        ("dsn", "failed", "5.1.10", Kind.HARD_BOUNCE),
        ("dsn", "failed", "5.2.1", Kind.HARD_BOUNCE),
        ("dsn", "failed", "5.2.2", Kind.BOUNCE),  # mailbox full: not gone
        ("dsn", "failed", "5.7.1", Kind.BOUNCE),  # policy or blocklist: keep the address
        ("dsn", "failed", "5.3.0", Kind.BOUNCE),
        ("dsn", "failed", "5.4.4", Kind.BOUNCE),
        ("dsn", "failed", "4.4.7", Kind.BOUNCE),  # gave up after retrying
        ("dsn", "failed", None, Kind.BOUNCE),
        ("dsn", "delayed", "4.4.1", Kind.DELAYED),
        ("dsn", "delivered", "2.0.0", Kind.NONE),
        ("dsn", "relayed", "2.0.0", Kind.NONE),
        ("arf", "abuse", None, Kind.COMPLAINT),
        ("arf", "fraud", None, Kind.COMPLAINT),
        ("arf", "not-spam", None, Kind.NONE),
    ],
)
def test_classification_follows_the_table(fmt, action, status, kind):
    assert classify(fmt, action, status) == kind


def test_the_verp_sender_carries_a_mac_that_verifies():
    signer = VerpSigner(KEY)
    mailboxes = Mailboxes("bounces@massmailer.test", signer)

    sender = mailboxes.sender(42)

    assert sender == verp_sender("bounces@massmailer.test", 42, signer.mac(42))
    assert sender.startswith("bounces+42-") and len(sender.split("@")[0]) == len("bounces+42-") + 10
    assert mailboxes.read(sender) == Recipient("verp", 42, True)
    assert mailboxes.read(sender.upper()) == Recipient("verp", 42, True)  # MTAs change case


def test_macs_are_the_same_as_before_the_shorter_encoding():
    # Bounces of mail sent before an upgrade carry MACs of the earlier formula (base32 of the
    # whole digest); they must keep verifying.
    key = hmac.new(KEY.encode(), b"massmailer.verp.v1", hashlib.sha256).digest()
    for job_id in (0, 7, 42, 10**6 + 3, 2**62):
        digest = hmac.digest(key, str(job_id).encode(), "sha256")
        assert VerpSigner(KEY).mac(job_id) == base64.b32encode(digest).decode()[:10].lower()


def test_a_guessed_or_moved_mac_does_not_verify():
    signer = VerpSigner(KEY)
    mailboxes = Mailboxes("bounces@massmailer.test", signer)
    other_jobs_mac = signer.mac(43)

    assert mailboxes.read(f"bounces+42-{other_jobs_mac}@massmailer.test").verified is False
    assert mailboxes.read("bounces+42@massmailer.test") == Recipient("verp", 42, False)
    assert VerpSigner("z" * 40).verify(42, signer.mac(42)) is False


def test_a_mac_made_with_a_previous_key_still_verifies():
    old = VerpSigner("o" * 40)

    assert VerpSigner(KEY, previous_keys=["o" * 40]).verify(42, old.mac(42))


def test_only_our_addresses_are_accepted():
    mailboxes = Mailboxes(
        "bounces@massmailer.test",
        VerpSigner(KEY),
        feedback_address="fbl@massmailer.test",
        unsubscribe_address="unsubscribe@massmailer.test",
    )

    assert mailboxes.read("bounces@massmailer.test").kind == "bounce"
    assert mailboxes.read("<FBL@massmailer.test>").kind == "feedback"
    assert mailboxes.read("unsubscribe@massmailer.test").kind == "unsubscribe"
    for other in (
        "postmaster@massmailer.test",
        "bounces+42-abc@elsewhere.example",
        "bounces+x@massmailer.test",
        "someone@example.com",
    ):
        assert mailboxes.read(other) is None, other


def test_the_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])

    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
