"""The batch intake path before issue 9 item 5, kept only as bench_intake.py's baseline.

Copied from massmailer/batches/intake.py and store.py at commit 6708f82: every recipient's
subject, text and html rendered once by the sandbox, the jobs inserted with insertmanyvalues
`INSERT ... RETURNING`, and `ANALYZE email_jobs` after any batch of 1,000 jobs or more, in the
request. `install()` swaps these in for the functions the API view calls.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

import massmailer.batches as batches
from massmailer import suppressions
from massmailer.batches.intake import UNSUBSCRIBE_VAR, BatchRequest, Rejection
from massmailer.batches.store import StoredBatch
from massmailer.config import Settings
from massmailer.delivery.message import make_message_id
from massmailer.models import Batch, EmailJob, Status
from massmailer.models.types import utcnow
from massmailer.templates import CompiledTemplate, TemplateError, compile_template
from massmailer.validation import MAX_SUBJECT, ValidationError, check_header_text, parse_address

MAX_VARS_BYTES = 10_000
RENDER_BUDGET_SECONDS = 20.0
ANALYZE_AFTER_JOBS = 1000
ANALYZE_LOCK_KEY = 0x6D6D_616E_616C_7A
jobs = EmailJob.__table__


@dataclass
class Screened:
    accepted: list = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class LegacyRecipient:
    to_name: str | None
    to_addr: str
    variables: dict
    subject: str


def screen(session: Session, request: BatchRequest, *, settings: Settings) -> Screened:
    result = Screened()
    candidates = _addresses(request.recipients, result)
    suppressed = suppressions.suppressed_among(session, (c[2] for c in candidates))
    compiled = compile_template(request.template, settings.max_body_bytes)
    extra = (
        {UNSUBSCRIBE_VAR: f"{settings.public_url}/unsubscribe/{'x' * 80}"}
        if request.category == "marketing"
        else {}
    )
    deadline = time.monotonic() + RENDER_BUDGET_SECONDS
    for index, to_name, to_addr, variables in candidates:
        if to_addr.lower() in suppressed:
            result.rejected.append(Rejection(index, _shown(request, index), "suppressed"))
            continue
        try:
            subject = _render_check(compiled, variables, extra, settings.max_body_bytes)
        except (TemplateError, ValidationError) as exc:
            result.rejected.append(Rejection(index, _shown(request, index), str(exc)))
            continue
        result.accepted.append(LegacyRecipient(to_name, to_addr, variables, subject))
        if time.monotonic() > deadline:
            raise ValidationError("template", "rendering takes too long")
    result.rejected.sort(key=lambda r: r.index)
    return result


def _addresses(recipients: list[dict], result: Screened) -> list:
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
            result.rejected.append(Rejection(index, shown, "vars too large"))
            continue
        candidates.append((index, to_name, to_addr, variables))
    return candidates


def _render_check(compiled: CompiledTemplate, variables: dict, extra: dict, max_bytes: int) -> str:
    subject = compiled.render_part("subject", variables)
    check_header_text(subject, "rendered subject", MAX_SUBJECT)
    body_vars = {**variables, **extra} if extra else variables
    size = 0
    for part in ("text", "html"):
        if compiled.has(part):
            size += len(compiled.render_part(part, body_vars).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValidationError("rendered body", f"is larger than {max_bytes} bytes")
    return subject


def _shown(request: BatchRequest, index: int) -> str:
    return _shown_value(request.recipients[index].get("to"))


def _shown_value(value: object) -> str:
    return value[:320] if isinstance(value, str) else json.dumps(value)[:320]


def store(
    session: Session,
    request: BatchRequest,
    screened: Screened,
    *,
    api_key_id: int | None,
    settings: Settings,
) -> StoredBatch:
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
    rows = [
        {
            "recipient": r.to_addr,
            "recipient_name": r.to_name,
            "sender": batch.sender,
            "sender_name": batch.sender_name,
            "subject": r.subject,
            "body": "",
            "html": None,
            "headers": None,
            "priority": batch.priority,
            "category": batch.category,
            "send_at": batch.send_at,
            "status": Status.PENDING,
            "attempts": 0,
            "message_id": make_message_id(settings.message_id_domain),
            "api_key_id": batch.api_key_id,
            "batch_id": batch.id,
            "template_vars": r.variables,
            "created_at": now,
            "updated_at": now,
        }
        for r in screened.accepted
    ]
    job_ids: list[int] = []
    if rows:
        job_ids = list(session.execute(insert(jobs).returning(jobs.c.job_id), rows).scalars())
    return StoredBatch(batch.id, job_ids, request.priority, request.send_at, screened.rejected)


def refresh_statistics(session: Session, stored: StoredBatch) -> None:
    if len(stored.job_ids) < ANALYZE_AFTER_JOBS:
        return
    got = session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ANALYZE_LOCK_KEY})
    if got:
        session.execute(text("ANALYZE email_jobs"))
    session.commit()


def install() -> None:
    """Make POST /v1/batches take the legacy path in this process."""
    current_publish = batches.publish

    def publish_then_analyze(session, publisher, stored, *, chunk_size):
        published = current_publish(session, publisher, stored, chunk_size=chunk_size)
        refresh_statistics(session, stored)
        return published

    batches.screen = screen
    batches.store = store
    batches.publish = publish_then_analyze
