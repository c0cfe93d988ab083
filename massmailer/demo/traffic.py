"""The demo's clients: a newsletter posted as batches, then sign-in codes posted one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flask import Flask

from massmailer.demo.providers import UNKNOWN_USER_MARK

LOW_PRIORITY = 0
HIGH_PRIORITY = 9
SENDER = "MassMailer demo <demo@massmailer.localhost>"
NEWSLETTER_TEMPLATE = {
    "subject": "Newsletter #{{ n }}: what is new this month",
    "text": "Hello reader {{ n }},\n\nHere is what happened this month.\n",
}


class DemoClientError(Exception):
    """The API refused a request the demo expected it to accept."""


@dataclass(frozen=True)
class Request:
    """One POST the demo makes, and how many emails it asks for."""

    path: str
    body: dict
    emails: int


def plan(
    count: int, high_share: float, batch_size: int = 10_000, bounce_every: int = 100
) -> Iterator[Request]:
    """Yield the requests for count emails: the newsletter in batches first, then the codes.

    The newsletter's readers are all queued at once, as a campaign is, so a backlog exists however
    fast delivery is; the sign-in codes arriving after it must overtake it (priority 9 over 0).
    """
    highs = round(count * high_share)
    readers = [_reader(n, bounce_every) for n in range(count - highs)]
    for start in range(0, len(readers), batch_size):
        recipients = readers[start : start + batch_size]
        yield Request("/v1/batches", _newsletter(recipients), len(recipients))
    for n in range(highs):
        yield Request("/v1/emails", _sign_in_code(n), 1)


def recipients(requests: Iterator[Request]) -> Iterator[str]:
    """Yield every recipient address the requests name."""
    for request in requests:
        if request.path == "/v1/batches":
            yield from (r["to"] for r in request.body["recipients"])
        else:
            yield request.body["to"]


def _reader(n: int, bounce_every: int) -> dict:
    # Every bounce_every-th reader left long ago: the providers answer 550 5.1.1 for them.
    unknown = bounce_every and n % bounce_every == bounce_every - 1
    local = f"{UNKNOWN_USER_MARK}{n}" if unknown else f"reader{n}"
    return {"to": f"{local}@example.com", "vars": {"n": n}}


def _newsletter(recipients: list[dict]) -> dict:
    return {
        "from": SENDER,
        "template": NEWSLETTER_TEMPLATE,
        "recipients": recipients,
        "priority": LOW_PRIORITY,
        "category": "marketing",
    }


def _sign_in_code(n: int) -> dict:
    return {
        "from": SENDER,
        "to": f"user{n}@example.com",
        "subject": "Your sign-in code",
        "text": f"Your code is {n % 1000000:06d}. It expires in 10 minutes.\n",
        "priority": HIGH_PRIORITY,
    }


def post_all(
    app: Flask, api_key: str, requests: Iterator[Request], on_accepted: Callable[[int], None]
) -> int:
    """POST every request through the real app; return how many emails were accepted."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {api_key}"}
    accepted = 0
    for request in requests:
        response = client.post(request.path, json=request.body, headers=headers)
        answer = response.get_json(silent=True) or {}
        if response.status_code != 202 or answer.get("rejected"):
            text = response.get_data(as_text=True)[:2000]
            raise DemoClientError(f"POST {request.path} answered {response.status_code}: {text}")
        accepted += request.emails
        on_accepted(request.emails)
    return accepted
