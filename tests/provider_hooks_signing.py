"""Test keys and signers for the provider webhooks: an SNS certificate, a SendGrid P-256 key,
a Mailgun signing key; and the published samples under tests/fixtures/provider_webhooks/."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from massmailer.bounces.hooks.sns import string_to_sign

FIXTURES = Path(__file__).parent / "fixtures" / "provider_webhooks"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:massmailer-ses"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"
MAILGUN_KEY = "key-mailgun-test-signing-" + "k" * 16


@functools.cache
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def sns_cert_pem(key: rsa.RSAPrivateKey | None = None) -> bytes:
    """A self-signed certificate for sns.amazonaws.com around the test key."""
    key = key or sns_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def sns_signed(message: dict, version: str = "1", key: rsa.RSAPrivateKey | None = None) -> dict:
    """The message with SignatureVersion, SigningCertURL and Signature set, as SNS would."""
    message = {"SignatureVersion": version, "SigningCertURL": CERT_URL, **message}
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = (key or sns_key()).sign(string_to_sign(message), padding.PKCS1v15(), digest)
    return {**message, "Signature": base64.b64encode(signature).decode()}


def sns_notification(ses: dict, *, message_id: str = "6f1d1c50-0000-5000-8000-000000000001"):
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": "2026-12-01T11:00:00.000Z",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }


def sns_subscription(topic: str = TOPIC, host: str = "sns.eu-west-1.amazonaws.com") -> dict:
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a7",
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.",
        "SubscribeURL": f"https://{host}/?Action=ConfirmSubscription&TopicArn={topic}&Token=2336",
        "Timestamp": "2026-12-01T11:00:00.000Z",
    }


def ses_bounce(message_id: str, recipient: str, bounce_type: str, subtype: str, status: str):
    return {
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": f"0102017-{message_id}-{status}",
            "bounceType": bounce_type,
            "bounceSubType": subtype,
            "bouncedRecipients": [
                {
                    "emailAddress": recipient,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; 550 {status} mailbox unavailable",
                }
            ],
            "timestamp": "2026-12-01T10:59:59.000Z",
        },
        "mail": {"messageId": message_id, "timestamp": "2026-12-01T10:59:00.000Z"},
    }


def ses_complaint(message_id: str, recipient: str) -> dict:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "feedbackId": f"0102017-complaint-{message_id}",
            "complainedRecipients": [{"emailAddress": recipient}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-12-01T10:59:59.000Z",
        },
        "mail": {"messageId": message_id},
    }


@functools.cache
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key(key: ec.EllipticCurvePrivateKey | None = None) -> str:
    der = (
        (key or sendgrid_key())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(der).decode()


def sendgrid_headers(body: bytes, timestamp: int, key=None) -> dict[str, str]:
    signature = (key or sendgrid_key()).sign(
        str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256())
    )
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
    }


def mailgun_signature(timestamp: int, token: str, key: str = MAILGUN_KEY) -> dict:
    digest = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": str(timestamp), "token": token, "signature": digest}


def mailgun_post(event: dict, timestamp: int, token: str, key: str = MAILGUN_KEY) -> dict:
    return {"signature": mailgun_signature(timestamp, token, key), "event-data": event}
