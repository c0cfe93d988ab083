"""Provider webhook signatures, without a database: published samples byte for byte, then
payloads signed with test keys (good, tampered, wrong key, stale, replayed), and the tables
that map each provider's events to the bounce effects."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from massmailer.bounces.hooks import Refused, mailgun, sendgrid, ses, sns
from massmailer.bounces.hooks.replay import MemorySeenOnce
from massmailer.bounces.report import Kind
from tests import provider_hooks_signing as signing
from tests.provider_hooks_signing import FIXTURES, TOPIC

NOW = 1_764_590_000


def verifier(fetched: list | None = None, pem: bytes | None = None) -> sns.SnsVerifier:
    def fetch(url: str) -> bytes:
        if fetched is not None:
            fetched.append(url)
        return pem or signing.sns_cert_pem()

    return sns.SnsVerifier((TOPIC,), fetch)


def refused(call) -> int:
    with pytest.raises(Refused) as caught:
        call()
    return caught.value.status


# Published samples ---------------------------------------------------------------------------


def test_the_published_sns_notification_verifies_with_its_certificate():
    body = (FIXTURES / "sns_sample_message.json").read_bytes()
    pem = (FIXTURES / "sns_sample_cert.pem").read_bytes()
    topic = json.loads(body)["TopicArn"]
    fetched = []
    checker = sns.SnsVerifier((topic,), lambda url: fetched.append(url) or pem)

    assert checker.verify(body)["Message"] == "boo"
    assert fetched == [json.loads(body)["SigningCertURL"]]


def test_the_published_sns_notification_fails_once_one_byte_changes():
    body = (FIXTURES / "sns_sample_message.json").read_bytes()
    pem = (FIXTURES / "sns_sample_cert.pem").read_bytes()
    checker = sns.SnsVerifier((), lambda url: pem)

    assert refused(lambda: checker.verify(body.replace(b'"boo"', b'"bop"'))) == 403


def sendgrid_sample() -> tuple[dict, bytes]:
    sample = json.loads((FIXTURES / "sendgrid_sample.json").read_text())
    return sample, (FIXTURES / sample["body_file"]).read_bytes()


def test_the_published_sendgrid_example_verifies():
    sample, body = sendgrid_sample()
    key = sendgrid.load_public_key(sample["public_key"])
    stamp = int(sample["timestamp"])

    sendgrid.verify(
        key,
        body,
        sample["signature"],
        sample["timestamp"],
        now=stamp + 10,
        max_age=300,
        seen=MemorySeenOnce(),
    )
    (event,) = sendgrid.events(body)
    assert (event.kind, event.provider_ids) == (Kind.HARD_BOUNCE, ("LRzXl_NHStOGhQ4kofSm_A",))


@pytest.mark.parametrize("change", ["body", "timestamp", "key"])
def test_the_published_sendgrid_example_fails_when_anything_changes(change):
    sample, body = sendgrid_sample()
    key = sendgrid.load_public_key(sample["public_key"])
    stamp = sample["timestamp"]
    if change == "body":
        body = body.replace(b"dropped", b"dropper")
    elif change == "timestamp":
        stamp = str(int(stamp) + 1)
    else:
        key = sendgrid.load_public_key(signing.sendgrid_public_key())

    status = refused(
        lambda: sendgrid.verify(
            key,
            body,
            sample["signature"],
            stamp,
            now=int(stamp),
            max_age=300,
            seen=MemorySeenOnce(),
        )
    )
    assert status == 403


# SNS with a test certificate -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signature_versions_1_and_2_verify(version):
    note = signing.sns_signed(signing.sns_notification({"notificationType": "Bounce"}), version)

    assert verifier().verify(json.dumps(note).encode())["MessageId"] == note["MessageId"]


def test_a_signature_made_with_the_other_hash_is_refused():
    note = signing.sns_signed(signing.sns_notification({}), "2")
    note["SignatureVersion"] = "1"

    assert refused(lambda: verifier().verify(json.dumps(note).encode())) == 403


def test_the_confirmation_string_to_sign_has_token_and_subscribe_url_not_subject():
    confirmation = signing.sns_subscription()
    text = sns.string_to_sign({**confirmation, "Subject": "ignored"}).decode()

    assert text.split("\n")[::2][:-1] == [
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ]  # fmt: skip
    note = sns.string_to_sign(signing.sns_notification({})).decode()
    assert "Token" not in note and "SubscribeURL" not in note
    assert (
        "Subject" in sns.string_to_sign({**signing.sns_notification({}), "Subject": "s"}).decode()
    )


def test_a_tampered_notification_is_refused():
    note = signing.sns_signed(signing.sns_notification({"notificationType": "Bounce"}))
    note["Message"] = json.dumps({"notificationType": "Complaint"})

    assert refused(lambda: verifier().verify(json.dumps(note).encode())) == 403


def test_a_notification_signed_by_another_key_is_refused():
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    note = signing.sns_signed(signing.sns_notification({}), key=other)

    assert refused(lambda: verifier().verify(json.dumps(note).encode())) == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
        "https://user@sns.eu-west-1.amazonaws.com/cert.pem",
        "https://s3.amazonaws.com/cert.pem",
        "",
    ],
)
def test_a_certificate_url_off_the_sns_hosts_is_refused_before_any_fetch(url):
    fetched = []
    note = signing.sns_signed({**signing.sns_notification({}), "SigningCertURL": url})

    assert refused(lambda: verifier(fetched).verify(json.dumps(note).encode())) == 403
    assert fetched == []


def test_sns_china_hosts_are_sns_hosts():
    assert sns.check_sns_url("https://sns.cn-north-1.amazonaws.com.cn/c.pem", "u")


def test_certificates_are_fetched_once_per_url():
    fetched = []
    checker = verifier(fetched)
    for n in range(3):
        note = signing.sns_signed(signing.sns_notification({}, message_id=f"id-{n}"))
        checker.verify(json.dumps(note).encode())

    assert fetched == [signing.CERT_URL]


@pytest.mark.parametrize(
    "body",
    [
        b'{"notificationType": "Bounce", "bounce": {}}',  # raw message delivery
        b"not json",
        b'{"Type": "Notification"}',
        b'{"Type": "Other", "Signature": "x"}',
    ],
)
def test_unsigned_bodies_and_raw_message_delivery_are_refused(body):
    fetched = []

    assert refused(lambda: verifier(fetched).verify(body)) == 400
    assert fetched == []


def test_subscribe_url_must_be_on_the_topics_region_host():
    fetched = []
    good = signing.sns_subscription()
    sns.confirm(good, fetched.append)

    assert fetched == [good["SubscribeURL"]]
    for host in ("sns.us-east-1.amazonaws.com", "evil.example", "sns.eu-west-1.evil.example"):
        bad = signing.sns_subscription(host=host)
        assert refused(lambda bad=bad: sns.confirm(bad, fetched.append)) == 403
    assert len(fetched) == 1


# SendGrid with a test key --------------------------------------------------------------------


def sendgrid_verify(body: bytes, headers: dict, *, now=NOW, seen=None, public=None):
    return sendgrid.verify(
        sendgrid.load_public_key(public or signing.sendgrid_public_key()),
        body,
        headers.get(sendgrid.SIGNATURE_HEADER),
        headers.get(sendgrid.TIMESTAMP_HEADER),
        now=now,
        max_age=300,
        seen=seen or MemorySeenOnce(),
    )


def test_sendgrid_good_tampered_wrong_key_stale_and_replayed():
    body = b'[{"event":"bounce","sg_event_id":"e1"}]'
    headers = signing.sendgrid_headers(body, NOW)
    seen = MemorySeenOnce()
    other = signing.sendgrid_public_key(ec.generate_private_key(ec.SECP256R1()))

    sendgrid_verify(body, headers, seen=seen)
    assert refused(lambda: sendgrid_verify(body + b" ", headers)) == 403
    assert refused(lambda: sendgrid_verify(body, headers, public=other)) == 403
    assert refused(lambda: sendgrid_verify(body, headers, now=NOW + 301)) == 403
    assert refused(lambda: sendgrid_verify(body, headers, seen=seen)) == 409
    assert refused(lambda: sendgrid_verify(body, {})) == 401


def test_a_sendgrid_key_that_is_not_p256_is_refused():
    with pytest.raises(ValueError):
        sendgrid.load_public_key("bm90IGEga2V5")
    p384 = signing.sendgrid_public_key(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError):
        sendgrid.load_public_key(p384)


# Mailgun with a test key ---------------------------------------------------------------------


def mailgun_verify(posted: dict, *, now=NOW, seen=None, key=signing.MAILGUN_KEY):
    mailgun.verify(posted, key, now=now, max_age=300, seen=seen or MemorySeenOnce())


def test_mailgun_good_tampered_wrong_key_stale_and_replayed():
    posted = signing.mailgun_post({"event": "failed"}, NOW, "a" * 50)
    seen = MemorySeenOnce()
    tampered = {**posted, "signature": {**posted["signature"], "timestamp": str(NOW + 1)}}

    mailgun_verify(posted, seen=seen)
    assert refused(lambda: mailgun_verify(tampered)) == 403
    assert refused(lambda: mailgun_verify(posted, key="key-other-" + "x" * 20)) == 403
    assert refused(lambda: mailgun_verify(posted, now=NOW + 301)) == 403
    assert refused(lambda: mailgun_verify(posted, seen=seen)) == 409
    assert refused(lambda: mailgun.read(b'{"event-data": {}}')) == 401


# What each event means -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounce_type", "subtype", "status", "kind"),
    [
        ("Permanent", "General", "5.1.1", Kind.HARD_BOUNCE),
        ("Permanent", "General", "5.7.1", Kind.BOUNCE),
        ("Permanent", "General", None, Kind.HARD_BOUNCE),
        ("Permanent", "NoEmail", "5.0.0", Kind.HARD_BOUNCE),
        ("Permanent", "Suppressed", None, Kind.HARD_BOUNCE),
        ("Permanent", "OnAccountSuppressionList", None, Kind.HARD_BOUNCE),
        ("Permanent", "MessageTooLarge", "5.3.4", Kind.BOUNCE),
        ("Permanent", "ContentRejected", "5.7.1", Kind.BOUNCE),
        ("Transient", "MailboxFull", "4.2.2", Kind.DELAYED),
        ("Transient", "General", None, Kind.DELAYED),
        ("Undetermined", "Undetermined", None, Kind.BOUNCE),
    ],
)
def test_ses_bounce_kinds(bounce_type, subtype, status, kind):
    assert ses.bounce_kind(bounce_type, subtype, status) == kind


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"event": "bounce", "type": "bounce", "status": "5.1.1"}, Kind.HARD_BOUNCE),
        ({"event": "bounce", "type": "bounce", "status": "5.7.1"}, Kind.BOUNCE),
        ({"event": "bounce", "type": "blocked", "status": "5.1.1"}, Kind.BOUNCE),
        ({"event": "dropped", "reason": "Bounced Address"}, Kind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Invalid"}, Kind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Unsubscribed Address"}, Kind.BOUNCE),
        ({"event": "spamreport"}, Kind.COMPLAINT),
        ({"event": "deferred", "response": "451 4.7.1 try later"}, Kind.DELAYED),
        ({"event": "delivered"}, Kind.NONE),
        ({"event": "open"}, Kind.NONE),
    ],
)
def test_sendgrid_event_kinds(event, kind):
    assert sendgrid.event_kind(event) == kind


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (
            {"event": "failed", "severity": "permanent", "delivery-status": {"message": "5.1.1"}},
            Kind.HARD_BOUNCE,
        ),
        (
            {"event": "failed", "severity": "permanent", "delivery-status": {"message": "5.7.1"}},
            Kind.BOUNCE,
        ),
        (
            {"event": "failed", "severity": "permanent", "reason": "suppress-bounce"},
            Kind.HARD_BOUNCE,
        ),
        ({"event": "failed", "severity": "temporary"}, Kind.DELAYED),
        ({"event": "complained"}, Kind.COMPLAINT),
        ({"event": "delivered"}, Kind.NONE),
    ],
)
def test_mailgun_event_kinds(event, kind):
    assert mailgun.event_kind(event) == kind


def test_sendgrid_events_without_an_event_id_or_effect_are_skipped():
    body = json.dumps(
        [{"event": "bounce", "status": "5.1.1"}, {"event": "open", "sg_event_id": "o"}]
    ).encode()

    assert sendgrid.events(body) == []
