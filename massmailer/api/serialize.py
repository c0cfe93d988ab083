"""Turn rows into the API's JSON shapes; times are RFC 3339 with an offset."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from massmailer.models import EmailAttempt, EmailEvent, EmailJob, InboundReport


def rfc3339(value: datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 (UTC, explicit offset)."""
    return value.isoformat() if value is not None else None


def job_json(
    job: EmailJob,
    attempts: list[EmailAttempt],
    events: Sequence[EmailEvent] = (),
    bounce: InboundReport | None = None,
) -> dict:
    """The public view of one job: its attempts, its events (oldest first), its latest bounce."""
    return {
        "id": job.job_id,
        "status": job.status,
        "to": job.recipient,
        "from": job.sender,
        "subject": job.subject,
        "priority": job.priority,
        "category": job.category,
        "provider": job.provider,
        "attempts": job.attempts,
        "message_id": job.message_id,
        "provider_queue_id": job.provider_queue_id,
        "last_error": job.last_error,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "send_at": rfc3339(job.send_at),
        "next_attempt_at": rfc3339(job.next_attempt_at) if job.status == "PENDING" else None,
        "sent_at": rfc3339(job.sent_at),
        "history": [attempt_json(a) for a in attempts],
        "events": [event_json(e) for e in events],
        "bounce": bounce_json(bounce) if bounce is not None else None,
    }


def event_json(event: EmailEvent) -> dict:
    """One event as the API shows it."""
    return {
        "type": event.type,
        "at": rfc3339(event.at),
        "provider": event.provider,
        "smtp_code": event.smtp_code,
        "enhanced_code": event.enhanced_code,
        "detail": event.detail,
    }


def bounce_json(report: InboundReport) -> dict:
    """The latest report applied to a job: bounce, complaint or delay."""
    return {
        "type": report.kind,
        "status": report.status_code,
        "diagnostic": report.diagnostic,
        "at": rfc3339(report.received_at),
    }


def attempt_json(attempt: EmailAttempt) -> dict:
    """One try as the API shows it."""
    return {
        "attempt": attempt.attempt_no,
        "provider": attempt.provider,
        "outcome": attempt.outcome,
        "smtp_code": attempt.smtp_code,
        "enhanced_code": attempt.enhanced_code,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
        "at": rfc3339(attempt.created_at),
    }
