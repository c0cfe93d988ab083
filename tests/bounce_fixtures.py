"""Real-shaped DSN and ARF messages (tests/fixtures/bounces/), filled in for one sent job."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"


def fixture(
    name: str,
    *,
    verp: str = "bounces+42-abcdefghij@massmailer.test",
    rcpt: str = "gone@example.org",
    message_id: str = "<4a1b@massmailer.test>",
    feedback: str = "fbl@massmailer.test",
) -> bytes:
    """The fixture's bytes with CRLF line ends, as they cross SMTP."""
    text = (FIXTURES / name).read_text()
    for key, value in (
        ("VERP", verp),
        ("RCPT", rcpt),
        ("MESSAGE_ID", message_id),
        ("FEEDBACK", feedback),
    ):
        text = text.replace("{{" + key + "}}", value)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
