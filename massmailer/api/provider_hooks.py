"""POST /v1/inbound/ses, /sendgrid, /mailgun: provider webhooks, each verified before it is used.

No API key: each provider's signature is the authority (massmailer/bounces/hooks/). A provider
that is not configured refuses every post (403) before reading it. A post that is forged, stale
or replayed answers 4xx and changes nothing; a verified event already stored answers 200 with
state `duplicate`.

The collaborators that reach outside (the SNS certificate and SubscribeURL fetcher, the replay
store, the clock) live in one HookServices per process, made on first use (after any fork) and
replaceable by tests: app.extensions["massmailer.provider_hooks"].
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from flask import Blueprint, current_app, jsonify, request

from massmailer.api.auth import request_path_redis
from massmailer.api.errors import error_response
from massmailer.bounces.hooks import ProviderEvent, Refused, mailgun, sendgrid, ses, sns
from massmailer.bounces.hooks.replay import MemorySeenOnce, RedisSeenOnce, SeenOnce
from massmailer.bounces.hooks.store import receive_events
from massmailer.extensions import db
from massmailer.models.types import utcnow

logger = logging.getLogger(__name__)
bp = Blueprint("provider_hooks", __name__, url_prefix="/v1/inbound")
EXTENSION = "massmailer.provider_hooks"


@dataclass
class HookServices:
    """What the webhook views use beyond the request: one per process."""

    seen: SeenOnce
    fetch: sns.Fetcher = sns.https_fetch
    clock: Callable[[], float] = time.time
    pid: int = field(default_factory=os.getpid)
    verifiers: dict = field(default_factory=dict)
    sendgrid_keys: dict = field(default_factory=dict)

    def sendgrid_key(self, encoded: str) -> ec.EllipticCurvePublicKey:
        """The configured SendGrid key, parsed once per process rather than on every post."""
        if encoded not in self.sendgrid_keys:
            self.sendgrid_keys[encoded] = sendgrid.load_public_key(encoded)
        return self.sendgrid_keys[encoded]

    def sns(self, topic_arns: tuple[str, ...]) -> sns.SnsVerifier:
        """The SNS verifier, whose certificate cache lives as long as this process."""
        if topic_arns not in self.verifiers:
            self.verifiers[topic_arns] = sns.SnsVerifier(topic_arns, self.fetch)
        return self.verifiers[topic_arns]


@bp.post("/ses")
def receive_ses():
    settings = current_app.extensions["massmailer.settings"]
    if not settings.sns_topic_arns:
        raise Refused(403, "no SNS topic is configured (MASSMAILER_SNS_TOPIC_ARNS)")
    body = _body(settings)
    message = sns.parse(body)
    services = hook_services()
    verifier = services.sns(settings.sns_topic_arns)
    if not verifier.topic_known(message):
        # Nothing is fetched for a topic we do not know: a poster cannot make us call out.
        logger.warning(
            "event=sns_refused type=%s topic=%s reason=unknown_topic",
            message.get("Type"), str(message.get("TopicArn"))[:256],
        )  # fmt: skip
        raise Refused(403, "the TopicArn is not one of MASSMAILER_SNS_TOPIC_ARNS")
    message = verifier.verify(body)
    if message["Type"] != "Notification":
        return _confirmation(message, services)
    return _stored(ses.events(message))


def _confirmation(message: dict, services: HookServices):
    """SubscriptionConfirmation: visit SubscribeURL; UnsubscribeConfirmation: note it."""
    confirmed = message["Type"] == "SubscriptionConfirmation"
    if confirmed:
        try:
            sns.confirm(message, services.fetch)
        except OSError:
            raise Refused(503, "the SubscribeURL could not be reached; SNS will resend") from None
    logger.info(
        "event=sns_%s topic=%s confirmed=%s",
        message["Type"], message.get("TopicArn"), confirmed,
    )  # fmt: skip
    return jsonify({"received": 0, "events": [], "confirmed": confirmed}), 200


@bp.post("/sendgrid")
def receive_sendgrid():
    settings = current_app.extensions["massmailer.settings"]
    if not settings.sendgrid_webhook_public_key:
        raise Refused(403, "SendGrid webhooks are not configured")
    body = _body(settings)
    services = hook_services()
    sendgrid.verify(
        services.sendgrid_key(settings.sendgrid_webhook_public_key),
        body,
        request.headers.get(sendgrid.SIGNATURE_HEADER),
        request.headers.get(sendgrid.TIMESTAMP_HEADER),
        now=services.clock(),
        max_age=settings.provider_webhook_max_age,
        seen=services.seen,
    )
    return _stored(sendgrid.events(body))


@bp.post("/mailgun")
def receive_mailgun():
    settings = current_app.extensions["massmailer.settings"]
    if not settings.mailgun_signing_key:
        raise Refused(403, "Mailgun webhooks are not configured")
    posted = mailgun.read(_body(settings))
    services = hook_services()
    mailgun.verify(
        posted,
        settings.mailgun_signing_key,
        now=services.clock(),
        max_age=settings.provider_webhook_max_age,
        seen=services.seen,
    )
    return _stored(mailgun.events(posted))


for _view, _scope in (
    (receive_ses, "sns-signature"),
    (receive_sendgrid, "sendgrid-signature"),
    (receive_mailgun, "mailgun-signature"),
):
    _view.required_scope = _scope  # type: ignore[attr-defined]


@bp.errorhandler(Refused)
def _refused(exc: Refused):
    logger.info("event=provider_webhook_refused path=%s status=%d", request.path, exc.status)
    return error_response(exc.status, exc.message, "body")


def _body(settings) -> bytes:
    if (request.content_length or 0) > settings.bounce_max_bytes:
        raise Refused(413, "the body is over MASSMAILER_BOUNCE_MAX_BYTES")
    body = request.get_data(cache=False)
    if len(body) > settings.bounce_max_bytes:
        raise Refused(413, "the body is over MASSMAILER_BOUNCE_MAX_BYTES")
    return body


def _stored(found: list[ProviderEvent]):
    results = receive_events(db.session, found, utcnow())
    events = [{"event_id": r.event_id, "state": r.state, "job_id": r.job_id} for r in results]
    return jsonify({"received": len(events), "events": events, "confirmed": False}), 200


def hook_services() -> HookServices:
    """This process's HookServices, made on first use (after any fork)."""
    found = current_app.extensions.get(EXTENSION)
    if found is not None and found.pid == os.getpid():
        return found
    settings = current_app.extensions["massmailer.settings"]
    client = request_path_redis(settings.redis_url)
    seen: SeenOnce = (
        RedisSeenOnce(client, settings.redis_key_prefix) if client is not None else MemorySeenOnce()
    )
    services = HookServices(seen)
    current_app.extensions[EXTENSION] = services
    return services
