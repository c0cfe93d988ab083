"""Schemathesis holds the live API (gunicorn, PostgreSQL, RabbitMQ, Redis, a Celery worker, the
test SMTP server as the only provider) to its own OpenAPI document.

It must find no 5xx, no response that violates the document, no validator drift (the positive
cases accepted, the negative ones refused) and no stray mail: every recipient the SMTP server saw
is the `to` of a request answered 202.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from massmailer import apikeys
from massmailer.apikeys import KeyOptions
from massmailer.extensions import db
from massmailer.validation import ValidationError, parse_address
from tests import infra

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]

# A body over the transport limit answers 413 (documented) whatever its fields say: a 1 MB text
# field of non-ASCII characters is 6 MB of JSON escapes. 5xx is never acceptable.
_DATA_CHECKS = {
    "positive_data_acceptance": {
        "expected-statuses": ["2xx", "401", "403", "404", "409", "413", "429"]
    },
    "negative_data_rejection": {
        "expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "415", "429"]
    },
}
CONFIG = SchemathesisConfig.from_dict({"checks": _DATA_CHECKS})

_LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
_DOMAIN = st.from_regex(r"[a-z0-9]{1,12}\.(?:example|test|com|org)", fullmatch=True)
_NAME = st.text(st.characters(codec="utf-8", categories=["L", "N", "Zs"]), max_size=20)
ADDRESSES = st.one_of(
    st.builds(lambda local, d: f"{local}@{d}", _LOCAL, _DOMAIN),
    st.builds(lambda n, local, d: f"{n.strip() or 'x'} <{local}@{d}>", _NAME, _LOCAL, _DOMAIN),
)


# Webhook URLs: https to public IP literals, so registering one makes no DNS query and opens no
# connection (the guard refuses anything else, which the negative cases cover).
WEBHOOK_URLS = st.builds(
    lambda host, path: f"https://{host}/{path}",
    st.sampled_from(["93.184.215.14", "8.8.4.4:8443", "[2606:4700::1111]"]),
    st.from_regex(r"[a-z0-9/_-]{0,20}", fullmatch=True),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_api(app, env):
    port = free_port()
    log = open(infra.OUTPUT_DIR / f"gunicorn-{infra.run_id()}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--timeout", "60"],
        cwd=infra.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        infra.wait_until(lambda: _answers(base), 30, 0.2, "gunicorn to answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _answers(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def recipients_of(case) -> list[str]:
    """The addresses a request answered 202 asked us to mail."""
    body = case.body if isinstance(case.body, dict) else {}
    if case.path == "/v1/emails":
        values = [body.get("to")]
    else:
        values = [r.get("to") for r in body.get("recipients", []) if isinstance(r, dict)]
    found = []
    for value in values:
        with contextlib.suppress(ValidationError):  # refused per recipient: never mailed
            found.append(parse_address(value, "to")[1].lower())
    return found


def test_schemathesis_finds_no_5xx_no_violation_no_drift_and_no_stray_mail(
    live_api, env, smtp_server
):
    schemathesis.openapi.format("mm-address", ADDRESSES)
    schemathesis.openapi.format("mm-webhook-url", WEBHOOK_URLS)
    raw = apikeys.create(db.session, "fuzzer", KeyOptions(rate_per_second=100_000, burst=100_000))
    auth = {"Authorization": f"Bearer {raw}"}
    schema = schemathesis.openapi.from_url(live_api + "/openapi.json", config=CONFIG)
    accepted: set[str] = set()
    failures: list[str] = []
    seen = 0

    with infra.running_worker(env, concurrency=2):
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                seen += _fuzz(operation, mode, live_api, auth, accepted, failures)
        infra.wait_until(lambda: _settled(smtp_server), 60, 0.5, "the worker to finish sending")

    assert not failures, "\n\n".join(failures[:10])
    assert seen >= 300, f"only {seen} requests were made"
    stray = {r.lower() for m in smtp_server.messages for r in m.rcpt_tos} - accepted
    assert not stray, f"mail to addresses no 202 request named: {sorted(stray)[:10]}"


def _settled(smtp_server) -> bool:
    from sqlalchemy import text

    db.session.expire_all()
    pending = db.session.execute(
        text("SELECT count(*) FROM email_jobs WHERE status = 'PENDING' AND send_at IS NULL")
    ).scalar()
    return pending == 0


def _fuzz(operation, mode, base, auth, accepted, failures) -> int:
    calls = 0

    # The key is part of each case, so a negative case never counts it as missing.
    @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    def run(case):
        nonlocal calls
        calls += 1
        response = case.call(base_url=base, timeout=30)
        if response.status_code == 202:
            accepted.update(recipients_of(case))
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:  # FailureGroup: all it found
            failures.append(f"{operation.label} {mode.value}: {exc}")

    started = time.monotonic()
    try:
        run()
    except Unsatisfiable:
        # With the key fixed, an operation whose only input is the key has no negative case.
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no positive case"
    assert time.monotonic() - started < 300, f"{operation.label} took too long"
    return calls
