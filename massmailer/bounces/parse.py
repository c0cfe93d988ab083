"""Raw inbound bytes -> Report: DSN, ARF, else the non-standard detectors (pure)."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message

from massmailer.bounces.arf import parse_arf
from massmailer.bounces.dsn import parse_dsn
from massmailer.bounces.freeform import parse_freeform
from massmailer.bounces.report import Report


def parse_message(raw: bytes) -> Message:
    """The message object of raw bytes (the stdlib parser never raises on malformed input)."""
    return message_from_bytes(raw)


def parse_report(msg: Message) -> Report | None:
    """Read a DSN, an ARF complaint or a non-standard bounce; None when it is none of these."""
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "") or "").lower()
        if report_type == "delivery-status":
            return parse_dsn(msg)
        if report_type == "feedback-report":
            return parse_arf(msg)
    # Mislabelled reports exist: look for the parts themselves before the free-text detectors.
    return parse_arf(msg) or parse_dsn(msg) or parse_freeform(msg)
