"""The OpenAPI document cannot drift from the code: routes, scopes, fields and limits are compared
with the app and the validators; a table of requests gets the same verdict from both."""

from __future__ import annotations

import re

import jsonschema_rs
import pytest

from massmailer import create_app, validation
from massmailer.api.openapi import document
from massmailer.batches.intake import BATCH_FIELDS, RECIPIENT_FIELDS, TEMPLATE_FIELDS
from massmailer.config import load_settings
from massmailer.validation import ValidationError, parse_email_request

SETTINGS = load_settings({}, require_services=False)
DOC = document(SETTINGS)
SCHEMAS = DOC["components"]["schemas"]


@pytest.fixture(scope="module")
def demo_app():
    return create_app(SETTINGS, publisher=object())


def v1_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_every_v1_route_is_documented_and_nothing_else(demo_app):
    documented = {(path, method) for path, item in DOC["paths"].items() for method in item}

    assert documented == v1_routes(demo_app)


def test_each_operation_names_the_scope_its_view_requires(demo_app):
    for rule in demo_app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        view = demo_app.view_functions[rule.endpoint]
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = DOC["paths"][path][method.lower()]
            assert f"`{view.required_scope}`" in operation["description"], (path, method)
            assert {"401", "429"} <= set(operation["responses"]), (path, method)


def test_request_fields_are_the_ones_the_validators_accept():
    assert set(SCHEMAS["EmailRequest"]["properties"]) == set(validation.REQUEST_FIELDS)
    assert set(SCHEMAS["BatchRequest"]["properties"]) == set(BATCH_FIELDS)
    template = SCHEMAS["BatchRequest"]["properties"]["template"]
    assert set(template["properties"]) == set(TEMPLATE_FIELDS)
    items = SCHEMAS["BatchRequest"]["properties"]["recipients"]["items"]
    assert set(items["properties"]) == set(RECIPIENT_FIELDS)
    assert all(s.get("additionalProperties") is False for s in (template, items))


def test_limits_come_from_the_settings_and_the_validators():
    email = SCHEMAS["EmailRequest"]["properties"]
    recipients = SCHEMAS["BatchRequest"]["properties"]["recipients"]

    assert email["subject"]["maxLength"] == validation.MAX_SUBJECT
    assert email["text"]["maxLength"] == SETTINGS.max_body_bytes
    assert email["priority"]["maximum"] == max(validation.PRIORITIES)
    assert email["category"]["enum"] == list(validation.CATEGORIES)
    assert email["headers"]["maxProperties"] == validation.MAX_HEADERS
    assert recipients["maxItems"] == SETTINGS.max_batch_recipients


def test_the_document_has_the_bearer_scheme_idempotency_key_and_error_shapes():
    assert DOC["openapi"].startswith("3.1")
    assert DOC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert DOC["components"]["parameters"]["IdempotencyKey"]["name"] == "Idempotency-Key"
    assert "Retry-After" in DOC["components"]["responses"]["TooMany"]["headers"]
    codes = {c for item in DOC["paths"].values() for op in item.values() for c in op["responses"]}
    assert {"400", "401", "403", "404", "409", "413", "429"} <= codes


def test_openapi_json_is_served_without_a_key(demo_app):
    response = demo_app.test_client().get("/openapi.json")

    assert response.status_code == 200
    assert response.get_json() == DOC


def _resolved_email_schema() -> dict:
    schema = {**SCHEMAS["EmailRequest"], "$defs": {"Address": SCHEMAS["Address"]}}
    text = repr(schema).replace("#/components/schemas/Address", "#/$defs/Address")
    return eval(text)


VALIDATOR = jsonschema_rs.Draft202012Validator(_resolved_email_schema())
GOOD = {"to": "ann@example.com", "subject": "Hi", "text": "Hello"}


@pytest.mark.parametrize(
    "payload",
    [
        GOOD,
        {**GOOD, "text": "", "html": "<p>x</p>"},
        {**GOOD, "priority": 9, "category": "marketing", "send_at": "2030-01-01T00:00:00Z"},
        {**GOOD, "headers": {"Reply-To": "a@example.com", "x-tag": "v", "List-Id": "L <l.ex.com>"}},
        {**GOOD, "headers": {"In-Reply-To": "<a@b>", "X-Campaign-Id": "spring"}},
        {**GOOD, "priority": 10},
        {**GOOD, "priority": "1"},
        {**GOOD, "category": "promo"},
        {**GOOD, "subject": "a\r\nb"},
        {**GOOD, "subject": "x" * 999},
        {**GOOD, "text": ""},
        {**GOOD, "unknown": 1},
        {**GOOD, "headers": {"x-smtpapi": "{}"}},
        {**GOOD, "headers": {"x-ses-tag": "a"}},
        {**GOOD, "headers": {"In-Reply-To": "not an id"}},
        {**GOOD, "headers": {f"x-h{i}": "v" for i in range(21)}},
        {**GOOD, "send_at": "2030-01-01T00:00:00"},
        {"subject": "x", "text": "y"},
    ],
)  # fmt: skip
def test_the_document_and_the_validator_agree_on_a_table_of_requests(payload):
    try:
        parse_email_request(payload, default_from="s@example.com")
        accepted = True
    except ValidationError:
        accepted = False

    assert VALIDATOR.is_valid(payload) == accepted, payload
