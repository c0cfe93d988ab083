"""Batches: one template, many recipients with their variables; one job per recipient.

Intake parses the request, screens each recipient (address, duplicate, suppressed, renders its
template once to find missing variables), stores the batch and its jobs with one multi-row
INSERT in the caller's transaction and, after the commit, publishes chunks of job ids.
Delivery renders text and html again when it sends, from the batch's template (compiled once per
process by BatchTemplates) and the job's variables.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from massmailer import dispatch, jobstore, suppressions
from massmailer.config import Settings
from massmailer.jobstore import Dispatch
from massmailer.message import make_message_id
from massmailer.models import Batch, EmailJob, Status
from massmailer.models.types import utcnow
from massmailer.templates import CompiledTemplate, TemplateError, TemplateSource, compile_template
from massmailer.validation import (
    MAX_SUBJECT,
    ValidationError,
    check_header_text,
    parse_address,
    parse_email_request,
)

BATCH_FIELDS = ("template", "recipients", "from", "priority", "category", "send_at")
TEMPLATE_FIELDS = ("subject", "text", "html")
RECIPIENT_FIELDS = ("to", "vars")
MAX_VARS_BYTES = 10_000  # one recipient's variables, as JSON
# Rendering every recipient once at intake costs ~15 µs each for a typical template (0.15 s for
# 10,000); a template that takes far longer is refused rather than left to slow every worker.
RENDER_BUDGET_SECONDS = 20.0
UNSUBSCRIBE_VAR = "unsubscribe_url"  # given to text and html of marketing messages
# A load this large can leave the planner believing few jobs are PENDING, and then the claim
# (job_id IN (...) AND status = 'PENDING') scans every pending row through the status index.
ANALYZE_AFTER_JOBS = 1000
ANALYZE_LOCK_KEY = 0x6D6D_616E_616C_7A  # "mm analz": one ANALYZE at a time; others skip theirs

jobs = EmailJob.__table__
batches = Batch.__table__


class TooManyRecipients(ValidationError):
    """More recipients than one request may carry (answered 413)."""


@dataclass(frozen=True)
class BatchRequest:
    """A validated batch request; recipients are still raw and screened one by one."""

    template: TemplateSource
    recipients: list[dict]
    from_name: str | None
    from_addr: str
    priority: int
    category: str
    send_at: datetime | None


@dataclass(frozen=True)
class Recipient:
    to_name: str | None
    to_addr: str
    variables: dict
    subject: str  # rendered at intake: short, and shown by GET /v1/emails/<id>


@dataclass(frozen=True)
class Rejection:
    index: int
    to: str
    reason: str


@dataclass
class Screened:
    accepted: list[Recipient] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class StoredBatch:
    batch_id: int
    job_ids: list[int]
    priority: int
    send_at: datetime | None
    rejected: list[Rejection]

    def response(self) -> dict:
        """The 202 body: the batch id, how many jobs were created, who was refused and why."""
        return {
            "id": self.batch_id,
            "accepted": len(self.job_ids),
            "rejected": [{"index": r.index, "to": r.to, "reason": r.reason} for r in self.rejected],
        }


# --- parsing ------------------------------------------------------------------------------


def parse_batch_request(
    payload: object, *, default_from: str | None, max_body_bytes: int, max_recipients: int
) -> BatchRequest:
    """Return the validated request, or raise ValidationError (TooManyRecipients over the cap)."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    _known_fields(payload, BATCH_FIELDS, "")
    template = _template(payload.get("template"), max_body_bytes)
    recipients = _recipients(payload.get("recipients"), max_recipients)
    # The single-send rules for sender, priority, category and send_at, checked on a stand-in.
    common = parse_email_request(
        {
            "to": "recipient@example.com",
            "subject": "",
            "text": "-",
            **{k: payload[k] for k in ("from", "priority", "category", "send_at") if k in payload},
        },
        default_from=default_from,
        max_body_bytes=max_body_bytes,
    )
    if common.category != "marketing" and _uses_unsubscribe(template):
        raise ValidationError(
            "template", f"{UNSUBSCRIBE_VAR} is only given to marketing messages (category)"
        )
    return BatchRequest(
        template=template,
        recipients=recipients,
        from_name=common.from_name,
        from_addr=common.from_addr,
        priority=common.priority,
        category=common.category,
        send_at=common.send_at,
    )


def _known_fields(value: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in value:
        if key not in allowed:
            raise ValidationError(
                f"{where}{str(key)[:40]}", f"is not a known field (expected {', '.join(allowed)})"
            )


def _template(value: object, max_body_bytes: int) -> TemplateSource:
    if not isinstance(value, dict):
        raise ValidationError("template", 'must be an object like {"subject": …, "text": …}')
    _known_fields(value, TEMPLATE_FIELDS, "template.")
    if value.get("subject") is None:
        raise ValidationError("template.subject", "is required")
    subject = check_header_text(value["subject"], "template.subject", MAX_SUBJECT)
    text, html = value.get("text"), value.get("html")
    for name, part in (("text", text), ("html", html)):
        if part is not None and not isinstance(part, str):
            raise ValidationError(f"template.{name}", "must be a string")
    if not text and not html:
        raise ValidationError("template.text", "give a non-empty text or html template")
    if len((text or "").encode()) + len((html or "").encode()) > max_body_bytes:
        raise ValidationError("template", f"text and html must be at most {max_body_bytes} bytes")
    source = TemplateSource(subject, text or None, html or None)
    try:
        compile_template(source)
    except TemplateError as exc:
        raise ValidationError(f"template.{exc.part}", exc.message) from None
    return source


def _recipients(value: object, max_recipients: int) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValidationError("recipients", 'must be a non-empty list of {"to": …, "vars": {…}}')
    if len(value) > max_recipients:
        raise TooManyRecipients(
            "recipients",
            f"at most {max_recipients} recipients per request, got {len(value)}; "
            "split them into several batches",
        )
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ValidationError(f"recipients[{i}]", 'must be an object like {"to": …}')
        _known_fields(entry, RECIPIENT_FIELDS, f"recipients[{i}].")
        if not isinstance(entry.get("vars", {}), dict):
            raise ValidationError(f"recipients[{i}].vars", "must be an object")
    return value


def _uses_unsubscribe(template: TemplateSource) -> bool:
    compiled = compile_template(template)
    return any(UNSUBSCRIBE_VAR in compiled.variables(part) for part in ("text", "html"))


# --- screening ----------------------------------------------------------------------------


def screen(
    session: Session,
    request: BatchRequest,
    *,
    settings: Settings,
    monotonic: Callable[[], float] = time.monotonic,
) -> Screened:
    """Accept or reject each recipient: bad address, duplicate, suppressed, template error."""
    result = Screened()
    candidates = _addresses(request.recipients, result)
    suppressed = suppressions.suppressed_among(session, (c[2] for c in candidates))
    compiled = compile_template(request.template, settings.max_body_bytes)
    extra = _extra_vars(request.category, settings)
    deadline = monotonic() + RENDER_BUDGET_SECONDS
    for index, to_name, to_addr, variables in candidates:
        if to_addr.lower() in suppressed:
            result.rejected.append(Rejection(index, _shown(request, index), "suppressed"))
            continue
        try:
            subject = _render_check(compiled, variables, extra, settings.max_body_bytes)
        except (TemplateError, ValidationError) as exc:
            result.rejected.append(Rejection(index, _shown(request, index), str(exc)))
            continue
        result.accepted.append(Recipient(to_name, to_addr, variables, subject))
        if monotonic() > deadline:
            raise ValidationError(
                "template", f"rendering takes too long (over {RENDER_BUDGET_SECONDS:.0f} s)"
            )
    result.rejected.sort(key=lambda r: r.index)
    return result


def _addresses(recipients: list[dict], result: Screened) -> list[tuple[int, str | None, str, dict]]:
    seen: set[str] = set()
    candidates = []
    for index, entry in enumerate(recipients):
        shown = _shown_value(entry.get("to"))
        try:
            to_name, to_addr = parse_address(entry.get("to"), "to")
        except ValidationError as exc:
            result.rejected.append(Rejection(index, shown, f"bad address: {exc.message}"))
            continue
        if to_addr.lower() in seen:
            result.rejected.append(Rejection(index, shown, "duplicate in this request"))
            continue
        seen.add(to_addr.lower())
        variables = entry.get("vars") or {}
        if len(json.dumps(variables, ensure_ascii=False)) > MAX_VARS_BYTES:
            result.rejected.append(
                Rejection(index, shown, f"vars larger than {MAX_VARS_BYTES} characters as JSON")
            )
            continue
        candidates.append((index, to_name, to_addr, variables))
    return candidates


def _extra_vars(category: str, settings: Settings) -> dict:
    if category != "marketing":
        return {}
    # A stand-in of the real link's length; the real one is signed per job when it is sent.
    return {UNSUBSCRIBE_VAR: f"{settings.public_url}/unsubscribe/{'x' * 80}"}


def _render_check(
    compiled: CompiledTemplate, variables: dict, extra: dict, max_body_bytes: int
) -> str:
    """Render every part once; return the subject (header-safe), check the body size."""
    subject = compiled.render_part("subject", variables)
    check_header_text(subject, "rendered subject", MAX_SUBJECT)
    body_vars = {**variables, **extra} if extra else variables
    size = 0
    for part in ("text", "html"):
        if compiled.has(part):
            size += len(compiled.render_part(part, body_vars).encode("utf-8", "surrogatepass"))
    if size > max_body_bytes:
        raise ValidationError("rendered body", f"is larger than {max_body_bytes} bytes")
    return subject


def _shown(request: BatchRequest, index: int) -> str:
    return _shown_value(request.recipients[index].get("to"))


def _shown_value(value: object) -> str:
    return value[:320] if isinstance(value, str) else json.dumps(value)[:320]


# --- storing and publishing ---------------------------------------------------------------


def store(
    session: Session,
    request: BatchRequest,
    screened: Screened,
    *,
    api_key_id: int | None,
    settings: Settings,
) -> StoredBatch:
    """Insert the batch and its jobs in the session's transaction; the caller commits."""
    now = utcnow()
    batch = Batch(
        api_key_id=api_key_id,
        subject_template=request.template.subject,
        text_template=request.template.text,
        html_template=request.template.html,
        sender=request.from_addr,
        sender_name=request.from_name,
        priority=request.priority,
        category=request.category,
        send_at=request.send_at,
        accepted=len(screened.accepted),
        rejected=len(screened.rejected),
        created_at=now,
    )
    session.add(batch)
    session.flush()
    rows = [_job_row(batch, r, settings.message_id_domain, now) for r in screened.accepted]
    job_ids: list[int] = []
    if rows:
        # One executemany: SQLAlchemy turns it into multi-row INSERT ... RETURNING statements.
        job_ids = list(session.execute(insert(jobs).returning(jobs.c.job_id), rows).scalars())
    return StoredBatch(batch.id, job_ids, request.priority, request.send_at, screened.rejected)


def _job_row(batch: Batch, recipient: Recipient, domain: str, now: datetime) -> dict:
    return {
        "recipient": recipient.to_addr,
        "recipient_name": recipient.to_name,
        "sender": batch.sender,
        "sender_name": batch.sender_name,
        "subject": recipient.subject,
        "body": "",  # rendered when sent, from the batch's template
        "html": None,
        "headers": None,
        "priority": batch.priority,
        "category": batch.category,
        "send_at": batch.send_at,
        "status": Status.PENDING,
        "attempts": 0,
        "message_id": make_message_id(domain),
        "api_key_id": batch.api_key_id,
        "batch_id": batch.id,
        "template_vars": recipient.variables,
        "created_at": now,
        "updated_at": now,
    }


def publish(
    session: Session, publisher: dispatch.Publisher, stored: StoredBatch, *, chunk_size: int
) -> int:
    """Publish a committed batch's jobs in chunks, unless it is scheduled later."""
    if stored.send_at is not None and stored.send_at > utcnow():
        return 0  # the jobs wait in PostgreSQL; the sweeper releases them when due
    dispatches = [Dispatch(job_id, stored.priority, 0) for job_id in stored.job_ids]
    return dispatch.dispatch(session, publisher, dispatches, chunk_size=chunk_size)


def refresh_statistics(session: Session, stored: StoredBatch) -> bool:
    """ANALYZE email_jobs after a large batch so the claim keeps using the primary key."""
    if len(stored.job_ids) < ANALYZE_AFTER_JOBS or session.get_bind().dialect.name != "postgresql":
        return False
    got = session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ANALYZE_LOCK_KEY})
    if got:
        session.execute(text("ANALYZE email_jobs"))
    session.commit()
    return bool(got)


# --- progress and cancel ------------------------------------------------------------------


def own_batch(session: Session, batch_id: int, api_key_id: int) -> Batch | None:
    """Return the batch if this API key created it."""
    return session.scalar(select(Batch).where(Batch.id == batch_id, Batch.api_key_id == api_key_id))


def progress(session: Session, batch: Batch, now: datetime) -> dict:
    """The batch's state: counts by status, jobs in flight, the send rate."""
    stats = jobstore.batch_stats(session, batch.id, now)
    recent = stats.sent_last_minute / 60.0
    span = (
        (stats.last_sent_at - stats.first_sent_at).total_seconds()
        if stats.first_sent_at and stats.last_sent_at
        else 0.0
    )
    sent = stats.counts[Status.SENT]
    return {
        "id": batch.id,
        "status": _status(batch, stats.counts, now),
        "counts": stats.counts,
        "in_flight": stats.in_flight,
        "accepted": batch.accepted,
        "rejected": batch.rejected,
        "category": batch.category,
        "priority": batch.priority,
        "send_at": _iso(batch.send_at),
        "created_at": _iso(batch.created_at),
        "cancelled_at": _iso(batch.cancelled_at),
        "first_sent_at": _iso(stats.first_sent_at),
        "last_sent_at": _iso(stats.last_sent_at),
        "rate_per_second": {
            "last_minute": round(recent, 2),
            "overall": round(sent / span, 2) if span > 0 else None,
        },
    }


def _status(batch: Batch, counts: dict[str, int], now: datetime) -> str:
    if batch.cancelled_at is not None:
        return "CANCELLED"
    if counts[Status.PENDING] == 0:
        return "DONE"
    if batch.send_at is not None and batch.send_at > now:
        return "SCHEDULED"
    return "SENDING"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def cancel(session: Session, batch: Batch, now: datetime) -> dict:
    """Cancel every job of the batch nobody holds; report how many were in flight."""
    session.execute(
        update(batches)
        .where(batches.c.id == batch.id, batches.c.cancelled_at.is_(None))
        .values(cancelled_at=now)
    )
    cancelled, in_flight = jobstore.cancel_batch(session, batch.id, now)
    counts = jobstore.batch_stats(session, batch.id, now).counts
    session.commit()
    return {
        "id": batch.id,
        "status": "CANCELLED",
        "cancelled": cancelled,
        "in_flight": in_flight,
        "counts": counts,
    }


# --- templates at send time ---------------------------------------------------------------


class BatchTemplates:
    """Compiled batch templates, per process: a batch's template never changes once stored."""

    def __init__(self, max_output_chars: int, max_batches: int = 64) -> None:
        self._max_output_chars = max_output_chars
        self._max_batches = max_batches
        self._cache: OrderedDict[int, CompiledTemplate | TemplateError] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, session: Session, batch_ids: Iterable[int | None]) -> None:
        """Compile the templates of these batches that are not cached yet (one query)."""
        with self._lock:
            missing = {b for b in batch_ids if b is not None and b not in self._cache}
        if not missing:
            return
        rows = session.execute(
            select(
                batches.c.id,
                batches.c.subject_template,
                batches.c.text_template,
                batches.c.html_template,
            ).where(batches.c.id.in_(missing))
        )
        for batch_id, subject, text_part, html in rows:
            source = TemplateSource(subject, text_part, html)
            try:
                compiled: CompiledTemplate | TemplateError = compile_template(
                    source, self._max_output_chars
                )
            except TemplateError as exc:  # validated at intake; kept so each job fails clearly
                compiled = exc
            self._put(batch_id, compiled)

    def get(self, batch_id: int) -> CompiledTemplate:
        """Return the compiled template; raise TemplateError if unknown or not compilable."""
        with self._lock:
            found = self._cache.get(batch_id)
            if found is not None:
                self._cache.move_to_end(batch_id)
        if found is None:
            raise TemplateError("text", f"the template of batch {batch_id} is not available")
        if isinstance(found, TemplateError):
            raise found
        return found

    def _put(self, batch_id: int, compiled: CompiledTemplate | TemplateError) -> None:
        with self._lock:
            self._cache[batch_id] = compiled
            while len(self._cache) > self._max_batches:
                self._cache.popitem(last=False)
