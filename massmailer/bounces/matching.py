"""Which job a report is about: the VERP address, else the returned Message-ID, else the
provider's message id (SES and SendGrid rewrite the envelope sender and the Message-ID).

A VERP address whose MAC does not match settles it: the report is forged and nothing else is
tried, so guessing a job id and quoting any Message-ID cannot fail a job either.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from massmailer.bounces.report import Report
from massmailer.bounces.verp import Mailboxes, Recipient
from massmailer.models import EmailJob

jobs = EmailJob.__table__


@dataclass(frozen=True)
class Match:
    job_id: int | None
    how: str  # verp, message-id, provider-id, forged, none


def match_report(
    session: Session, mailboxes: Mailboxes, to: Recipient | None, report: Report
) -> Match:
    """Find the job a report names; never guess."""
    verps = [to] if to is not None and to.kind == "verp" else []
    verps += [r for r in (mailboxes.read(s) for s in report.senders) if r and r.kind == "verp"]
    for verp in verps:
        if not verp.verified:
            return Match(None, "forged")
    if verps:
        return Match(_existing(session, verps[0].job_id), "verp")
    found = _by_message_id(session, report.message_ids)
    if found is not None:
        return Match(found, "message-id")
    found = _by_provider_id(session, provider_ids(report))
    return Match(found, "provider-id") if found is not None else Match(None, "none")


def match_ids(session: Session, message_ids: tuple[str, ...], ids: list[str]) -> Match:
    """The job of a provider event: our Message-ID first, then the provider's message id."""
    found = _by_message_id(session, message_ids)
    if found is not None:
        return Match(found, "message-id")
    found = _by_provider_id(session, ids)
    return Match(found, "provider-id") if found is not None else Match(None, "none")


def provider_ids(report: Report) -> list[str]:
    """The provider ids a report may carry: SES's Message-ID local part, SendGrid's prefix."""
    ids = list(report.provider_ids)
    for message_id in report.message_ids:
        local, _, domain = message_id.strip("<>").partition("@")
        if domain.endswith("amazonses.com"):
            ids.append(local)
    # sg_message_id is the queue id of the 250 reply, then ".filter…" and more.
    ids += [i.split(".filter", 1)[0] for i in ids if ".filter" in i]
    return [i for i in dict.fromkeys(ids) if i][:20]


def _existing(session: Session, job_id: int | None) -> int | None:
    return session.scalar(select(jobs.c.job_id).where(jobs.c.job_id == job_id))


def _by_message_id(session: Session, message_ids: tuple[str, ...]) -> int | None:
    if not message_ids:
        return None
    return session.scalar(
        select(jobs.c.job_id).where(jobs.c.message_id.in_(message_ids[:20])).limit(1)
    )


def _by_provider_id(session: Session, ids: list[str]) -> int | None:
    if not ids:
        return None
    return session.scalar(select(jobs.c.job_id).where(jobs.c.provider_queue_id.in_(ids)).limit(1))
