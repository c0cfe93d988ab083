"""Amazon SNS messages: verify the signature before anything in them is believed.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
- The body is JSON sent as text/plain. Raw message delivery posts the bare message with no
  Type or Signature: there is nothing to verify, so it is refused.
- SigningCertURL must be https on sns.<region>.amazonaws.com(.cn); the certificate is fetched
  through an injectable fetcher and cached per process.
- SignatureVersion 1 signs with SHA1, 2 with SHA256 (RSA PKCS#1 v1.5), over "Key\\nValue\\n"
  lines whose keys differ: Notification (Subject only when present) versus
  SubscriptionConfirmation and UnsubscribeConfirmation (SubscribeURL, Token).
- The TopicArn must be one of MASSMAILER_SNS_TOPIC_ARNS.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
import threading
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from massmailer.bounces.hooks import Refused

SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_KEYS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)  # fmt: skip
CONFIRMATIONS = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERT_BYTES = 16_384

Fetcher = Callable[[str], bytes]


def string_to_sign(message: dict) -> bytes:
    """The canonical "Key\\nValue\\n" string SNS signed for this message type."""
    keys = NOTIFICATION_KEYS if message.get("Type") == "Notification" else CONFIRMATION_KEYS
    lines = []
    for key in keys:
        if key in message and message[key] is not None:
            lines.append(f"{key}\n{message[key]}\n")
        elif key != "Subject":
            raise Refused(400, f"the SNS message has no {key}")
    return "".join(lines).encode("utf-8")


def check_sns_url(url: object, what: str) -> str:
    """An https URL on an SNS host, or Refused (never fetch elsewhere)."""
    parts = urlsplit(str(url or ""))
    host = parts.hostname or ""
    if parts.scheme != "https" or not SNS_HOST.match(host) or parts.port not in (None, 443):
        raise Refused(403, f"{what} is not an https URL on an SNS host")
    if parts.username or parts.password:
        raise Refused(403, f"{what} is not an https URL on an SNS host")
    return str(url)


def https_fetch(url: str) -> bytes:
    """GET an SNS URL over verified TLS, refusing redirects and large answers."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
        _NoRedirect,
    )
    with opener.open(url, timeout=5) as response:
        return response.read(MAX_CERT_BYTES + 1)


class SnsVerifier:
    """Verify SNS messages; certificates are fetched once per URL and kept."""

    def __init__(self, topic_arns: tuple[str, ...], fetch: Fetcher = https_fetch) -> None:
        self.topic_arns = frozenset(topic_arns)
        self._fetch = fetch
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def verify(self, body: bytes) -> dict:
        """The message, once its signature and certificate URL check out; else Refused."""
        message = parse(body)
        version = str(message.get("SignatureVersion"))
        if version not in HASHES:
            raise Refused(400, "SignatureVersion must be 1 or 2")
        try:
            signature = base64.b64decode(str(message["Signature"]), validate=True)
        except (binascii.Error, ValueError):
            raise Refused(403, "the SNS signature is not base64") from None
        key = self._key(check_sns_url(message.get("SigningCertURL"), "SigningCertURL"))
        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), HASHES[version]())
        except InvalidSignature:
            raise Refused(403, "the SNS signature does not verify") from None
        return message

    def topic_known(self, message: dict) -> bool:
        return message.get("TopicArn") in self.topic_arns

    def _key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            found = self._keys.get(url)
        if found is not None:
            return found
        try:
            pem = self._fetch(url)
        except OSError:
            raise Refused(503, "the SNS signing certificate could not be fetched") from None
        if len(pem) > MAX_CERT_BYTES:
            raise Refused(403, "the SNS signing certificate is too large")
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise Refused(403, "SigningCertURL did not give a certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused(403, "the SNS signing certificate is not RSA")
        with self._lock:
            self._keys[url] = key
        return key


def parse(body: bytes) -> dict:
    """The SNS envelope; a body without Type and Signature (raw delivery) is refused."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        message = None
    if not isinstance(message, dict) or "Type" not in message or "Signature" not in message:
        raise Refused(400, "not a signed SNS message (raw message delivery is refused)")
    if message["Type"] not in ("Notification", *CONFIRMATIONS):
        raise Refused(400, "unknown SNS message Type")
    return message


def confirm(message: dict, fetch: Fetcher) -> None:
    """Visit the SubscribeURL of a verified SubscriptionConfirmation: the topic's region only."""
    url = check_sns_url(message.get("SubscribeURL"), "SubscribeURL")
    region = str(message.get("TopicArn", "")).split(":")[3:4]
    host = urlsplit(url).hostname or ""
    if not region or host.split(".")[1] != region[0]:
        raise Refused(403, "SubscribeURL is not on the topic's SNS host")
    fetch(url)
