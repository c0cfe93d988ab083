"""Store each inbound report once, match it to its job and apply what it means.

Every report is stored first (the sha256 of its bytes is unique, so the same report twice is
stored and applied once), and its effects are written in the same transaction:

  hard bounce (5.1.x, 5.2.1)  SENT -> FAILED "bounced: …", event bounced; recipient suppressed
                              hard_bounce
  other permanent failure     SENT -> FAILED "bounced: …", event bounced; the address stays
  complaint                   the job stays SENT, event complained; recipient suppressed complaint
  delayed                     event deferred only
  mailto unsubscribe          the address its signed token names suppressed unsubscribe, event
                              unsubscribed on the job the token names

The job changes only through a guarded UPDATE (WHERE status = 'SENT') that logs its event from
the rows it changed (jobstore.fail_bounced); the suppression is an insert that keeps an existing
entry. A report whose job is still PENDING (claimed, or waiting
for a retry) is stored as pending and applied by the sweep once the job is final.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from massmailer import audit, jobstore, suppressions
from massmailer.bounces.matching import Match, match_report
from massmailer.bounces.parse import parse_message, parse_report
from massmailer.bounces.report import Kind, Report, clean, one_line
from massmailer.bounces.verp import Mailboxes, Recipient, VerpSigner
from massmailer.config import Settings
from massmailer.models import EmailJob, EventType, InboundReport, ReportState, Status
from massmailer.unsubscribe import BadToken, UnsubscribeLinks

logger = logging.getLogger(__name__)

reports = InboundReport.__table__
jobs = EmailJob.__table__
UNSUBSCRIBE = "unsubscribe"
DUPLICATE = "duplicate"
_TOKEN = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_.\-]+)", re.IGNORECASE)
# Reports that change no job state still leave an event on the job (Action: delayed -> deferred).
_LOGGED = {Kind.COMPLAINT: EventType.COMPLAINED, Kind.DELAYED: EventType.DEFERRED}
_SUPPRESS = {
    Kind.HARD_BOUNCE: "hard_bounce",
    Kind.COMPLAINT: "complaint",
    UNSUBSCRIBE: "unsubscribe",
}


@dataclass(frozen=True)
class Received:
    """What became of one inbound message."""

    report_id: int | None
    state: str  # a ReportState, or duplicate
    job_id: int | None = None
    kind: str | None = None


@dataclass(frozen=True)
class _Parsed:
    kind: str | None
    format: str | None
    match: Match
    report: Report | None = None
    recipient: str | None = None
    detail: str | None = None


class Inbox:
    """The reports' entry point, shared by the SMTP process and the HTTP endpoint."""

    def __init__(self, settings: Settings) -> None:
        bounce = settings.bounce_address or "bounces@" + settings.message_id_domain
        self.mailboxes = Mailboxes(
            bounce,
            VerpSigner(settings.secret_key, settings.previous_secret_keys),
            settings.feedback_address,
            settings.unsubscribe_mailto,
        )
        self._links = UnsubscribeLinks(
            settings.secret_key, settings.public_url, previous_keys=settings.previous_secret_keys
        )

    def accepts(self, address: str) -> Recipient | None:
        """What an envelope recipient names, or None: not ours, answer 550."""
        return self.mailboxes.read(address)

    def receive(
        self, session: Session, raw: bytes, envelope_to: str | None, channel: str, now: datetime
    ) -> Received:
        """Store, match and apply one report; commit. The same bytes twice change nothing."""
        to = self.mailboxes.read(envelope_to) if envelope_to else None
        parsed = self._read(session, raw, to)
        values = {
            "received_at": now,
            "digest": hashlib.sha256(raw).hexdigest(),
            "channel": channel,
            "envelope_to": clean(envelope_to, 320),
            "state": _initial_state(parsed),
            "kind": parsed.kind,
            "format": parsed.format,
            "job_id": parsed.match.job_id,
            "recipient": clean(parsed.recipient, 320),
            "status_code": parsed.report.status if parsed.report else None,
            "diagnostic": clean(parsed.report.diagnostic) if parsed.report else None,
            "detail": parsed.detail,
            "raw": raw,
        }
        report_id = insert_once(session, values)
        if report_id is None:
            session.rollback()
            return Received(None, DUPLICATE)
        state = values["state"]
        if state == ReportState.PENDING:
            state = apply_report(session, report_id, now)
        session.commit()
        logger.info(
            "event=inbound_report report_id=%d channel=%s state=%s kind=%s job_id=%s how=%s",
            report_id, channel, state, parsed.kind, parsed.match.job_id, parsed.match.how,
        )  # fmt: skip
        return Received(report_id, state, parsed.match.job_id, parsed.kind)

    def _read(self, session: Session, raw: bytes, to: Recipient | None) -> _Parsed:
        msg = parse_message(raw)
        if to is not None and to.kind == "unsubscribe":
            return self._unsubscribe(session, str(msg.get("Subject", "")))
        report = parse_report(msg)
        if report is None:
            return _Parsed(None, None, Match(None, "none"), detail="not a DSN, ARF or known bounce")
        match = match_report(session, self.mailboxes, to, report)
        detail = {"forged": "VERP MAC does not match", "none": "no job named"}.get(match.how)
        return _Parsed(report.kind, report.format, match, report, report.recipient, detail)

    def _unsubscribe(self, session: Session, subject: str) -> _Parsed:
        found = _TOKEN.search(subject)
        try:
            named = self._links.read(found.group(1)) if found else None
        except BadToken:
            named = None
        if named is None:
            return _Parsed(UNSUBSCRIBE, "mailto", Match(None, "forged"), detail="no valid token")
        job_id = session.scalar(select(jobs.c.job_id).where(jobs.c.job_id == named.job_id))
        return _Parsed(UNSUBSCRIBE, "mailto", Match(job_id, "token"), recipient=named.address)


def _initial_state(parsed: _Parsed) -> str:
    if parsed.kind is None:
        return ReportState.UNPARSABLE
    if parsed.match.how == "forged":
        return ReportState.FORGED
    if parsed.kind == UNSUBSCRIBE:
        return ReportState.PENDING  # applied at once below: it needs no job
    if parsed.match.job_id is None:
        return ReportState.UNMATCHED
    return ReportState.PENDING


def insert_once(session: Session, values: dict) -> int | None:
    """Insert a report row unless its digest is stored already; its id, or None."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(reports).values(values).on_conflict_do_nothing(index_elements=["digest"])
    return session.scalar(stmt.returning(reports.c.id))


def apply_report(session: Session, report_id: int, now: datetime) -> str:
    """Apply a stored pending report; return its new state (pending while its job is)."""
    row = session.execute(select(reports).where(reports.c.id == report_id)).one()
    if row.kind == UNSUBSCRIBE:
        detail = f"mailto; report {report_id}"
        _suppress(session, row.recipient, UNSUBSCRIBE, detail, now)
        if row.job_id is not None:
            jobstore.log_unsubscribed(session, row.job_id, row.recipient, detail)
        return _mark(session, report_id, ReportState.APPLIED, now)
    job = session.execute(
        select(jobs.c.status, jobs.c.recipient).where(jobs.c.job_id == row.job_id)
    ).one_or_none()
    if job is None:  # purged since
        return _mark(session, report_id, ReportState.UNMATCHED, now)
    if job.status == Status.PENDING:
        return ReportState.PENDING
    _apply_to_job(session, row, job.recipient, now)
    return _mark(session, report_id, ReportState.APPLIED, now)


def _apply_to_job(session: Session, row, recipient: str, now: datetime) -> None:
    """The report's effect on a final job and its recipient, with its event."""
    detail = one_line(f"{row.status_code or ''} {row.diagnostic or ''}") or row.kind
    if row.kind in (Kind.HARD_BOUNCE, Kind.BOUNCE):
        jobstore.fail_bounced(session, row.job_id, row.status_code, detail, now)
    elif row.kind in _LOGGED:
        jobstore.log_report(session, row.job_id, _LOGGED[row.kind], row.status_code, detail)
    reason = _SUPPRESS.get(row.kind)
    if reason:
        _suppress(session, recipient, reason, f"{detail}; job {row.job_id}", now)


def _suppress(session: Session, address: str, reason: str, detail: str, now: datetime) -> None:
    suppressions.add_many(session, [(address, reason, detail)], now)
    audit.record(session, "suppression.add", address, actor=f"inbound-{reason}", detail=detail)


def _mark(session: Session, report_id: int, state: str, now: datetime) -> str:
    session.execute(
        update(reports).where(reports.c.id == report_id).values(state=state, applied_at=now)
    )
    return state


def apply_pending(session: Session, now: datetime, limit: int = 500) -> int:
    """Apply the pending reports whose jobs are no longer PENDING; return how many."""
    waiting = (
        select(reports.c.id)
        .join(jobs, jobs.c.job_id == reports.c.job_id, isouter=True)
        .where(
            reports.c.state == ReportState.PENDING,
            (jobs.c.status.is_(None)) | (jobs.c.status != Status.PENDING),
        )
        .order_by(reports.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        waiting = waiting.with_for_update(of=reports, skip_locked=True)
    ids = list(session.scalars(waiting))
    for report_id in ids:
        apply_report(session, report_id, now)
    session.commit()
    return len(ids)


def prune(session: Session, now: datetime, retention: timedelta) -> None:
    """Drop raw bytes past the retention, and whole reports that never named a job."""
    cutoff = now - retention
    session.execute(
        update(reports)
        .where(reports.c.received_at < cutoff, reports.c.raw.is_not(None))
        .values(raw=None)
    )
    session.execute(
        delete(reports).where(
            and_(reports.c.received_at < cutoff, reports.c.job_id.is_(None)),
            reports.c.state != ReportState.PENDING,
        )
    )
    session.commit()
