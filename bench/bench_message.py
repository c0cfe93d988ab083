"""Print µs per message for build_message and for an EmailMessage build of the same content.

Run: python bench/bench_message.py [count]. Both are measured in the same run, on the same
machine state, so the ratio means more than either number.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from massmailer.delivery.message import OutgoingMessage, build_message, make_message_id

TEXT = "Hello {name},\n\nYour order #{n} has shipped. Track it at https://example.com/t/{n}\n" * 8
HTML = "<p>Hello <b>{name}</b>,</p><p>Your order #{n} has shipped.</p>\n" * 8


def messages(count: int, name: str, subject: str) -> list[OutgoingMessage]:
    """Return count distinct messages, as a batch would produce them."""
    now = datetime.now(UTC)
    return [
        OutgoingMessage(
            from_addr="shop@example.com",
            from_name="Example Shop",
            to_addr=f"user{n}@example.org",
            to_name=f"{name} {n}",
            subject=subject,
            text=TEXT.format(name=name, n=n),
            html=HTML.format(name=name, n=n),
            message_id=make_message_id("example.com"),
            date=now,
            headers=(("X-Campaign-Id", "spring"),),
        )
        for n in range(count)
    ]


def email_message(msg: OutgoingMessage) -> bytes:
    """Build the same message with the standard library's EmailMessage."""
    em = EmailMessage(policy=SMTP)
    em["From"] = formataddr((msg.from_name, msg.from_addr))
    em["To"] = formataddr((msg.to_name, msg.to_addr))
    em["Subject"] = msg.subject
    em["Date"] = format_datetime(msg.date)
    em["Message-ID"] = msg.message_id
    for name, value in msg.headers:
        em[name] = value
    em.set_content(msg.text)
    em.add_alternative(msg.html, subtype="html")
    return em.as_bytes()


def per_message_us(build, batch: list[OutgoingMessage]) -> float:
    """Return the mean µs per message of build over batch (best of three rounds)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for msg in batch:
            build(msg)
        best = min(best, time.perf_counter() - start)
    return best / len(batch) * 1e6


def main() -> None:
    """Print the comparison for an ASCII and a non-ASCII batch."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    cases = {
        "ascii": ("Alice", "Your order has shipped"),
        "non-ascii": ("Zoë Ångström", "Ihre Bestellung wurde versandt — Grüße"),
    }
    for label, (name, subject) in cases.items():
        batch = messages(count, name, subject)
        direct = per_message_us(build_message, batch)
        stdlib = per_message_us(email_message, batch[: max(count // 10, 50)])
        print(
            f"{label:>10}: build_message {direct:7.1f} µs/msg   "
            f"EmailMessage {stdlib:7.1f} µs/msg   ({stdlib / direct:.0f}x)"
        )


if __name__ == "__main__":
    main()
