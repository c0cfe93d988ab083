"""GET /openapi.json: the OpenAPI 3.1 document of /v1, built from the validators' own constants.

Limits, field lists, enums and the header rules come from validation.py, batches/ and
idempotency.py, so a changed limit changes the document too; tests/test_openapi.py checks the
routes and fields against the app, and tests/test_fuzz_api.py has Schemathesis hold the running
API to it (positive and negative cases). Addresses use the format `mm-address` (an addr-spec or
`Name <addr-spec>`, IDN domains allowed): JSON Schema's `email` format is narrower.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from massmailer import apikeys, validation
from massmailer.api.emails import EVENTS_SHOWN
from massmailer.api.suppressions import MAX_DETAIL, MAX_PAGE, REASONS
from massmailer.config import Settings
from massmailer.idempotency import HEADER as IDEMPOTENCY_HEADER
from massmailer.idempotency import MAX_KEY_LENGTH
from massmailer.models.events import DETAIL_CHARS, EventType
from massmailer.webhooks import EVENT_TYPES
from massmailer.webhooks.guard import MAX_URL_CHARS

bp = Blueprint("openapi", __name__)

ADDRESS_FORMAT = "mm-address"
# https:// whose host resolves only to public addresses (checked after DNS, massmailer/webhooks).
WEBHOOK_URL_FORMAT = "mm-webhook-url"
# validation._CONTROL as an ECMA-262 pattern: no line breaks or control characters (tab is fine).
HEADER_TEXT = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
NO_NUL = "^[^\\u0000]*$"  # PostgreSQL text cannot hold NUL: api/body.py refuses it anywhere
RFC3339 = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?"
    "([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


@bp.get("/openapi.json")
def openapi_json():
    return document(current_app.extensions["massmailer.settings"])


def document(settings: Settings) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for these settings (limits depend on them)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MassMailer API",
            "version": "1",
            "description": "Bulk email: single sends, batches, status, cancel, suppressions.",
        },
        "servers": [{"url": settings.public_url}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "inboundToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "MASSMAILER_INBOUND_TOKEN, for POST /v1/inbound/raw only.",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `flask --app wsgi api-key create NAME`; "
                    f"scopes: {', '.join(apikeys.SCOPES)}.",
                },
            },
            "schemas": _schemas(settings),
            "parameters": _parameters(),
            "responses": _responses(),
        },
    }


def _ci(word: str) -> str:
    """A case-insensitive pattern for word (ECMA-262 has no inline (?i))."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else _escape(c) for c in word)


def _escape(c: str) -> str:
    return "\\" + c if c in ".-+*?()[]{}|^$\\/" else c


def _header_schemas() -> dict[str, Any]:
    # Names are case-insensitive and each may appear once. JSON Schema cannot say "once,
    # ignoring case", so the document admits one spelling of each: the canonical one for the
    # named headers, lower case for other X- headers (the API accepts any case).
    named = {canonical for canonical in validation._NAMED_HEADERS.values()}
    x_name = "^x-(?!(?:" + "|".join(_x_tail(p) for p in _x_exclusions(named)) + "))"
    x_name += f"[!-9;-@\\[-~]{{1,{validation.MAX_HEADER_NAME - 2}}}$"
    text = {"type": "string", "maxLength": validation.MAX_HEADER_VALUE, "pattern": HEADER_TEXT}
    kinds = {
        "Reply-To": {"$ref": "#/components/schemas/Address"},
        "In-Reply-To": {**text, "pattern": "^" + validation._MSG_IDS.pattern + "$"},
        "References": {**text, "pattern": "^" + validation._MSG_IDS.pattern + "$"},
        "List-Id": {**text, "pattern": "^" + validation._LIST_ID.pattern + "$"},
    }
    return {
        "type": "object",
        "maxProperties": validation.MAX_HEADERS,
        "description": "Extra headers: Reply-To, In-Reply-To, References, List-Id or X- "
        "headers. Names are case-insensitive and each may be given once; this document "
        "spells the named ones canonically and other X- headers in lower case.",
        "properties": {name: kinds.get(name, text) for name in sorted(named)},
        "patternProperties": {x_name: text},
        "additionalProperties": False,
    }


def _x_exclusions(named: set[str]) -> list[str]:
    """What may not follow `x-`: the blocked prefixes and the named X- headers."""
    blocked = [p[2:] for p in validation._BLOCKED_X_PREFIXES]
    exact = [n.lower()[2:] + "$" for n in named if n.lower().startswith("x-")]
    return blocked + exact


def _x_tail(prefix: str) -> str:
    return "".join(_escape(c) for c in prefix[:-1]) + (
        "$" if prefix.endswith("$") else _escape(prefix[-1])
    )


def _schemas(settings: Settings) -> dict[str, Any]:
    body = {"type": "string", "maxLength": settings.max_body_bytes, "pattern": NO_NUL}
    subject = {"type": "string", "maxLength": validation.MAX_SUBJECT, "pattern": HEADER_TEXT}
    common = {
        "from": {"$ref": "#/components/schemas/Address"},
        "priority": {"type": "integer", "minimum": 0, "maximum": max(validation.PRIORITIES)},
        "category": {"enum": list(validation.CATEGORIES)},
        "send_at": {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339,
            "description": "RFC 3339 with an offset",
        },
    }
    non_empty = {"type": "string", "minLength": 1}
    return {
        "Address": {
            "type": "string",
            "format": ADDRESS_FORMAT,
            "maxLength": validation.MAX_ADDRESS + validation.MAX_DISPLAY_NAME + 3,
            "description": "user@example.com or Name <user@example.com>; one address",
        },
        "EmailRequest": {
            "type": "object",
            "properties": {
                "to": {"$ref": "#/components/schemas/Address"},
                "subject": subject,
                "text": body,
                "html": body,
                "headers": _header_schemas(),
                **common,
            },
            "required": ["to", "subject"],
            "anyOf": [
                {"required": ["text"], "properties": {"text": non_empty}},
                {"required": ["html"], "properties": {"html": non_empty}},
            ],
            "additionalProperties": False,
        },
        "BatchRequest": {
            "type": "object",
            "properties": {
                "template": {
                    "type": "object",
                    "properties": {"subject": subject, "text": body, "html": body},
                    "required": ["subject"],
                    "anyOf": [
                        {"required": ["text"], "properties": {"text": non_empty}},
                        {"required": ["html"], "properties": {"html": non_empty}},
                    ],
                    "additionalProperties": False,
                    "description": "Jinja2 in a sandbox with a render budget; "
                    "unsubscribe_url is given to marketing messages only.",
                },
                "recipients": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_batch_recipients,
                    "items": {
                        "type": "object",
                        "properties": {
                            "to": {"$ref": "#/components/schemas/Value"},
                            "vars": {"$ref": "#/components/schemas/Variables"},
                        },
                        "additionalProperties": False,
                        "description": "A recipient whose `to` is missing or not one valid "
                        "address is refused alone, listed in the answer's `rejected`.",
                    },
                },
                **common,
            },
            "required": ["template", "recipients"],
            "additionalProperties": False,
        },
        "Value": {
            "description": "Any JSON value; strings without NUL",
            "anyOf": [
                {"type": "string", "pattern": NO_NUL},
                {"type": ["number", "boolean", "null"]},
                {"type": "array", "items": {"$ref": "#/components/schemas/Value"}},
                {"$ref": "#/components/schemas/Variables"},
            ],
        },
        "Variables": {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/Value"},
        },
        "SuppressionRequest": {
            "type": "object",
            "properties": {
                "email": {"$ref": "#/components/schemas/Address"},
                "reason": {"enum": list(REASONS)},
                "detail": {"type": "string", "maxLength": MAX_DETAIL, "pattern": HEADER_TEXT},
            },
            "required": ["email"],
            "additionalProperties": False,
        },
        "Accepted": _object(id={"type": "integer"}, status={"const": "PENDING"}),
        "Email": _object(
            id={"type": "integer"},
            status={"enum": ["PENDING", "SENT", "FAILED", "CANCELLED"]},
            history={"type": "array"},
            events={
                "type": "array",
                "maxItems": EVENTS_SHOWN,
                "description": f"What happened, oldest first (the last {EVENTS_SHOWN})",
                "items": {"$ref": "#/components/schemas/Event"},
            },
            bounce={"anyOf": [{"$ref": "#/components/schemas/Bounce"}, {"type": "null"}]},
        ),
        "Event": _object(
            type={"enum": [str(t) for t in EventType]},
            at={"type": "string", "format": "date-time"},
            provider={"type": ["string", "null"]},
            smtp_code={"type": ["integer", "null"]},
            enhanced_code={"type": ["string", "null"]},
            detail={"type": ["string", "null"], "maxLength": DETAIL_CHARS},
        ),
        "Bounce": _object(
            type={"enum": ["hard_bounce", "bounce", "complaint", "delayed"]},
            status={"type": ["string", "null"]},
            diagnostic={"type": ["string", "null"]},
            at={"type": "string"},
        ),
        "InboundReceived": _object(
            id={"type": ["integer", "null"]},
            state={
                "enum": ["applied", "pending", "unmatched", "forged", "unparsable", "duplicate"]
            },
            job_id={"type": ["integer", "null"]},
        ),
        "ProviderEventsReceived": _object(
            received={"type": "integer"},
            events={
                "type": "array",
                "items": _object(
                    event_id={"type": "string"},
                    state={"enum": ["applied", "pending", "unmatched", "duplicate"]},
                    job_id={"type": ["integer", "null"]},
                ),
            },
            confirmed={"type": "boolean"},
        ),
        "Cancelled": _object(id={"type": "integer"}, status={"const": "CANCELLED"}),
        "BatchAccepted": _object(
            id={"type": "integer"}, accepted={"type": "integer"}, rejected={"type": "array"}
        ),
        "Batch": _object(id={"type": "integer"}, status={"type": "string"}),
        "Suppression": _object(
            email={"type": "string"},
            reason={"enum": list(REASONS)},
            created_at={"type": "string"},
        ),
        "SuppressionPage": _object(
            items={"type": "array", "items": {"$ref": "#/components/schemas/Suppression"}},
            next={"type": ["string", "null"]},
        ),
        "WebhookRequest": {
            "type": "object",
            "properties": {
                "url": {
                    "type": "string",
                    "format": WEBHOOK_URL_FORMAT,
                    "maxLength": MAX_URL_CHARS,
                    "description": "https:// and a public address (checked after DNS)",
                },
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": list(EVENT_TYPES)},
                },
            },
            "required": ["url", "events"],
            "additionalProperties": False,
        },
        "Webhook": _webhook_schema(),
        "WebhookCreated": _webhook_schema(secret={"type": "string", "pattern": "^whsec_"}),
        "WebhookPage": _object(
            items={"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}
        ),
        "WebhookTest": _object(message_id={"type": "string"}, type={"const": "webhook.test"}),
        "WebhookDeliveryPage": _object(
            items={
                "type": "array",
                "items": _object(
                    id={"type": "integer"},
                    message_id={"type": "string"},
                    attempt={"type": "integer"},
                    at={"type": "string", "format": "date-time"},
                    outcome={"enum": ["delivered", "retry", "failed", "disabled"]},
                    status_code={"type": ["integer", "null"]},
                    error={"type": ["string", "null"]},
                    duration_ms={"type": "integer"},
                ),
            }
        ),
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "field": {"type": ["string", "null"]},
                        "message": {"type": "string"},
                    },
                    "required": ["field", "message"],
                }
            },
            "required": ["error"],
        },
    }


def _webhook_schema(**extra: Any) -> dict[str, Any]:
    return _object(
        id={"type": "integer"},
        url={"type": "string"},
        events={"type": "array", "items": {"enum": list(EVENT_TYPES)}},
        enabled={"type": "boolean"},
        disabled_reason={"type": ["string", "null"]},
        created_at={"type": "string", "format": "date-time"},
        **extra,
    )


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _parameters() -> dict[str, Any]:
    return {
        "IdempotencyKey": {
            "name": IDEMPOTENCY_HEADER,
            "in": "header",
            "required": False,
            "description": "Replays the first response for the same key and body; "
            "a different body answers 409.",
            "schema": {"type": "string", "pattern": f"^[!-~]{{1,{MAX_KEY_LENGTH}}}$"},
        },
        "JobId": _path_id("job_id"),
        "BatchId": _path_id("batch_id"),
        "WebhookId": _path_id("webhook_id"),
    }


def _path_id(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }


def _responses() -> dict[str, Any]:
    described = {
        "BadRequest": "Invalid input; the field is named",
        "Unauthorized": "A valid API key is required",
        "Forbidden": "The key lacks the scope, or may not send from that domain",
        "NotFound": "No such object for this key",
        "Conflict": "Idempotency-Key reused with another body, not cancellable now,"
        " or a key's webhook endpoints are at their limit",
        "TooLarge": "Body or recipient list over the limit",
        "TooMany": "Over the key's quota; see Retry-After",
    }
    responses = {name: _error(text) for name, text in described.items()}
    responses["TooMany"]["headers"] = {
        "Retry-After": {"schema": {"type": "string"}, "description": "seconds"}
    }
    return responses


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        413: "TooLarge",
        429: "TooMany",
    }
    return {str(c): {"$ref": f"#/components/responses/{names[c]}"} for c in (401, 429, *codes)}


def _operation(
    summary: str,
    scope: str,
    responses: dict[str, Any],
    *,
    body: str | None = None,
    parameters: list[str] = (),  # type: ignore[assignment]
    query: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the `{scope}` scope (or `admin`).",
        "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in parameters]
        + (query or []),
        "responses": responses,
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return operation


def _paths() -> dict[str, Any]:
    email_path = {
        "name": "email",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
    list_query = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                    "maximum": MAX_PAGE}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {"name": "reason", "in": "query", "schema": {"enum": list(REASONS)}},
    ]  # fmt: skip
    return {
        "/v1/emails": {
            "post": _operation(
                "Send one email",
                "send",
                {
                    "202": _json("Accepted", "Stored; it will be sent"),
                    **_errors(400, 403, 409, 413),
                },
                body="EmailRequest",
                parameters=["IdempotencyKey"],
            )
        },
        "/v1/emails/{job_id}": {
            "get": _operation(
                "An email's status, attempts and events",
                "read",
                {"200": _json("Email", "The email"), **_errors(403, 404)},
                parameters=["JobId"],
            )
        },
        "/v1/emails/{job_id}/cancel": {
            "post": _operation(
                "Cancel a pending email",
                "send",
                {"200": _json("Cancelled", "Cancelled"), **_errors(403, 404, 409)},
                parameters=["JobId"],
            )
        },
        "/v1/batches": {
            "post": _operation(
                "Send one template to many recipients",
                "send",
                {
                    "202": _json("BatchAccepted", "Stored; refused recipients listed"),
                    **_errors(400, 403, 409, 413),
                },
                body="BatchRequest",
                parameters=["IdempotencyKey"],
            )
        },
        "/v1/batches/{batch_id}": {
            "get": _operation(
                "A batch's progress",
                "read",
                {"200": _json("Batch", "The batch"), **_errors(403, 404)},
                parameters=["BatchId"],
            )
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": _operation(
                "Cancel a batch's pending emails",
                "send",
                {"200": _json("Batch", "Cancelled"), **_errors(403, 404)},
                parameters=["BatchId"],
            )
        },
        "/v1/suppressions": {
            "get": _operation(
                "List suppressed addresses",
                "suppressions",
                {"200": _json("SuppressionPage", "A page"), **_errors(400, 403)},
                query=list_query,
            ),
            "post": _operation(
                "Suppress an address",
                "suppressions",
                {
                    "200": _json("Suppression", "Already suppressed"),
                    "201": _json("Suppression", "Suppressed"),
                    **_errors(400, 403, 413),
                },
                body="SuppressionRequest",
            ),
        },
        "/v1/inbound/raw": {"post": _inbound_operation()},
        **_provider_hook_paths(),
        "/v1/suppressions/{email}": {
            "get": _operation(
                "Look up an address",
                "suppressions",
                {"200": _json("Suppression", "Suppressed"), **_errors(403, 404)},
                query=[],
            )
            | {"parameters": [email_path]},
            "delete": _operation(
                "Remove an address from the list",
                "suppressions",
                {"204": {"description": "Removed"}, **_errors(403, 404)},
            )
            | {"parameters": [email_path]},
        },
        **_webhook_paths(),
    }


def _webhook_paths() -> dict[str, Any]:
    return {
        "/v1/webhooks": {
            "post": _operation(
                "Register a webhook endpoint (its secret is answered once)",
                "webhooks",
                {
                    "201": _json("WebhookCreated", "Registered"),
                    **_errors(400, 403, 409, 413),
                },
                body="WebhookRequest",
            ),
            "get": _operation(
                "List this key's webhook endpoints",
                "webhooks",
                {"200": _json("WebhookPage", "The endpoints"), **_errors(403)},
            ),
        },
        "/v1/webhooks/{webhook_id}": {
            "delete": _operation(
                "Delete a webhook endpoint",
                "webhooks",
                {"204": {"description": "Deleted"}, **_errors(403, 404)},
                parameters=["WebhookId"],
            )
        },
        "/v1/webhooks/{webhook_id}/test": {
            "post": _operation(
                "Send a webhook.test message",
                "webhooks",
                {"202": _json("WebhookTest", "Queued"), **_errors(403, 404)},
                parameters=["WebhookId"],
            )
        },
        "/v1/webhooks/{webhook_id}/deliveries": {
            "get": _operation(
                "The latest tries of this endpoint, newest first",
                "webhooks",
                {"200": _json("WebhookDeliveryPage", "The tries"), **_errors(403, 404)},
                parameters=["WebhookId"],
            )
        },
    }


def _inbound_operation() -> dict[str, Any]:
    """POST /v1/inbound/raw: authenticated by the inbound token, not an API key."""
    return {
        "summary": "Receive a raw bounce, complaint or unsubscribe message",
        "description": "Needs the `inbound` token (MASSMAILER_INBOUND_TOKEN) as the bearer, "
        "not an API key. The body is the message as received (RFC 5322 bytes); `to` names "
        "its envelope recipient. SendGrid Inbound Parse (raw) and Mailgun (mime) form posts "
        "are read too. The same message twice answers 200 `duplicate` and changes nothing.",
        "security": [{"inboundToken": []}],
        "parameters": [{"name": "to", "in": "query", "schema": {"type": "string"}}],
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "responses": {
            "202": _json("InboundReceived", "Stored (and applied, when it named a job)"),
            "200": _json("InboundReceived", "Already received"),
            **_errors(400, 413),
        },
    }


# (path, scope, summary, what signs it, request body media type and schema)
_PROVIDER_HOOKS = (
    (
        "ses",
        "sns-signature",
        "Receive Amazon SES bounce and complaint notifications through SNS",
        "the SNS signature (versions 1 and 2) with a certificate from an SNS host, for a topic "
        "in MASSMAILER_SNS_TOPIC_ARNS; a SubscriptionConfirmation is confirmed. Raw message "
        "delivery (unsigned) is refused",
        "text/plain",
        {"type": "string"},
    ),
    (
        "sendgrid",
        "sendgrid-signature",
        "Receive SendGrid Event Webhook posts",
        "ECDSA P-256 over the X-Twilio-Email-Event-Webhook-Timestamp and the body, with "
        "MASSMAILER_SENDGRID_WEBHOOK_PUBLIC_KEY",
        "application/json",
        {"type": "array", "items": {"type": "object"}},
    ),
    (
        "mailgun",
        "mailgun-signature",
        "Receive Mailgun webhook posts",
        "HMAC-SHA256 of signature.timestamp + signature.token with "
        "MASSMAILER_MAILGUN_SIGNING_KEY; each token is accepted once",
        "application/json",
        {"type": "object", "properties": {"signature": {"type": "object"}}},
    ),
)


def _provider_hook_paths() -> dict[str, Any]:
    """POST /v1/inbound/<provider>: no API key, the provider's signature is the authority."""
    return {
        f"/v1/inbound/{name}": {
            "post": {
                "summary": summary,
                "description": f"Needs `{scope}`, not an API key: {signed}. A provider that is "
                "not configured refuses every post (403). Forged, stale or replayed posts answer "
                "4xx and change nothing; an event already received answers `duplicate`.",
                "security": [],
                "requestBody": {"required": True, "content": {media: {"schema": schema}}},
                "responses": {
                    "200": _json("ProviderEventsReceived", "Verified; each event's fate"),
                    **_errors(400, 403, 409, 413),
                    "503": _error("A certificate or SubscribeURL could not be fetched; retry"),
                },
            }
        }
        for name, scope, summary, signed, media, schema in _PROVIDER_HOOKS
    }
