"""The demo's clients: a low-priority newsletter backlog, then sign-in codes mixed into the rest."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Flask

from massmailer.demo.providers import UNKNOWN_USER_MARK

LOW_PRIORITY = 0
HIGH_PRIORITY = 9
SENDER = "MassMailer demo <demo@massmailer.localhost>"


class DemoClientError(Exception):
    """The API refused a request the demo expected it to accept."""


def plan(count: int, high_share: float, bounce_every: int = 100) -> Iterator[dict]:
    """Yield count request bodies: half of the newsletter first, then the rest mixed with codes."""
    highs = round(count * high_share)
    lows = count - highs
    backlog = lows // 2
    for n in range(backlog):
        yield _newsletter(n, bounce_every)
    # Spread the sign-in codes evenly over the second half, so they keep arriving while the
    # newsletter backlog is being worked off.
    rest = count - backlog
    for k in range(rest):
        n = backlog + k
        is_high = (k + 1) * highs // rest > k * highs // rest
        yield _sign_in_code(n) if is_high else _newsletter(n, bounce_every)


def _newsletter(n: int, bounce_every: int) -> dict:
    # Every bounce_every-th reader left long ago: the providers answer 550 5.1.1 for them.
    local = (
        f"{UNKNOWN_USER_MARK}{n}"
        if bounce_every and n % bounce_every == bounce_every - 1
        else f"reader{n}"
    )
    return {
        "from": SENDER,
        "to": f"{local}@example.com",
        "subject": f"Newsletter #{n}: what is new this month",
        "text": f"Hello reader {n},\n\nHere is what happened this month.\n",
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
    app: Flask, api_key: str, bodies: Iterator[dict], on_accepted: Callable[[], None]
) -> int:
    """POST every body to /v1/emails through the real app; return how many were accepted."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {api_key}"}
    accepted = 0
    for body in bodies:
        response = client.post("/v1/emails", json=body, headers=headers)
        if response.status_code != 202:
            answer = response.get_data(as_text=True)
            raise DemoClientError(f"POST /v1/emails answered {response.status_code}: {answer}")
        accepted += 1
        on_accepted()
    return accepted
