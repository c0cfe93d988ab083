"""Store verified provider events once each and apply them like any other report.

The dedupe key is the provider's own event id (sha256 of "provider:event id" in the reports'
unique digest column), so a webhook retried or replayed by the provider changes nothing twice.
An event whose job cannot be found, or whose recipient is not the job's, is kept unmatched for
the operator (`flask --app wsgi bounces unmatched`), never applied by guess.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from massmailer.bounces.hooks import ProviderEvent
from massmailer.bounces.inbox import apply_report, insert_once
from massmailer.bounces.matching import Match, match_ids
from massmailer.bounces.report import clean
from massmailer.models import EmailJob, ReportState

logger = logging.getLogger(__name__)
jobs = EmailJob.__table__


@dataclass(frozen=True)
class Stored:
    """What became of one event: applied, pending, unmatched or duplicate."""

    event_id: str
    state: str
    job_id: int | None


def receive_events(session: Session, found: list[ProviderEvent], now: datetime) -> list[Stored]:
    """Store, match and apply each event; one commit for the post."""
    results = [_receive(session, event, now) for event in found]
    session.commit()
    for event, stored in zip(found, results, strict=True):
        logger.info(
            "event=provider_event provider=%s event_id=%s kind=%s state=%s job_id=%s",
            event.provider, clean(event.event_id, 200), event.kind, stored.state, stored.job_id,
        )  # fmt: skip
    return results


def _receive(session: Session, event: ProviderEvent, now: datetime) -> Stored:
    match = _match(session, event)
    state = ReportState.PENDING if match.job_id is not None else ReportState.UNMATCHED
    values = {
        "received_at": now,
        "digest": digest(event.provider, event.event_id),
        "channel": event.provider,
        "envelope_to": None,
        "state": state,
        "kind": str(event.kind),
        "format": event.provider,
        "job_id": match.job_id,
        "recipient": clean(event.recipient, 320),
        "status_code": clean(event.status, 16),
        "diagnostic": clean(event.diagnostic),
        "detail": _detail(event, match),
        "raw": event.raw,
    }
    report_id = insert_once(session, values)
    if report_id is None:
        return Stored(event.event_id, "duplicate", None)
    if state == ReportState.PENDING:
        state = apply_report(session, report_id, now)
    return Stored(event.event_id, state, match.job_id)


def digest(provider: str, event_id: str) -> str:
    """The dedupe key of a provider event."""
    return hashlib.sha256(f"{provider}:{event_id}".encode()).hexdigest()


def _match(session: Session, event: ProviderEvent) -> Match:
    match = match_ids(session, event.message_ids, [i for i in event.provider_ids if i][:20])
    if match.job_id is None or not event.recipient:
        return match
    recipient = session.scalar(select(jobs.c.recipient).where(jobs.c.job_id == match.job_id))
    if (recipient or "").lower() != event.recipient.lower():
        return Match(None, "recipient-differs")
    return match


def _detail(event: ProviderEvent, match: Match) -> str:
    base = f"{event.provider} event {clean(event.event_id, 200)}; matched by {match.how}"
    return base if match.how != "recipient-differs" else base + " (the job's recipient differs)"
