"""POST /v1/emails, GET /v1/emails/<id>, POST /v1/emails/<id>/cancel."""

from __future__ import annotations

from flask import Blueprint, current_app, g, request
from sqlalchemy import select

from massmailer import intake, jobstore
from massmailer.api.auth import check_sender, requires_scope, take_recipients
from massmailer.api.body import integral_numbers, json_body
from massmailer.api.errors import error_response
from massmailer.api.serialize import job_json
from massmailer.extensions import db
from massmailer.idempotency import Idempotency, StoredResponse, fingerprint, parse_key
from massmailer.models import EmailAttempt, EmailEvent, EmailJob, InboundReport, ReportState
from massmailer.models.types import utcnow
from massmailer.validation import parse_email_request

BOUNCE_KINDS = ("hard_bounce", "bounce", "complaint", "delayed")

bp = Blueprint("emails", __name__)

EVENTS_SHOWN = 100  # a job retried many times keeps its latest events in view


def idempotency_for(payload: object, settings) -> Idempotency:
    """The request's Idempotency-Key guard, scoped to the caller's API key."""
    return Idempotency(
        db.session,
        g.api_key.id,
        parse_key(request.headers),
        fingerprint(request.method, request.path, payload),
        settings.idempotency_ttl_seconds,
    )


def respond(stored: StoredResponse):
    """Answer a stored response; a replay of an earlier request says so in a header."""
    if stored.replayed:
        return stored.body, stored.status, {"Idempotent-Replayed": "true"}
    return stored.body, stored.status


@bp.post("/emails")
@requires_scope("send")
def create_email():
    settings = current_app.extensions["massmailer.settings"]
    payload = json_body()
    integral_numbers(payload, "priority")
    guard = idempotency_for(payload, settings)
    earlier = guard.earlier()
    if earlier is not None:
        return respond(earlier)
    email = parse_email_request(
        payload, default_from=settings.default_from, max_body_bytes=settings.max_body_bytes
    )
    check_sender(email.from_addr)
    take_recipients(1)

    def create():
        job = intake.store(db.session, email, api_key_id=g.api_key.id, settings=settings)
        return 202, {"id": job.job_id, "status": job.status}, job

    response, job = guard.run(create)
    if job is not None:
        publisher = current_app.extensions["massmailer.publisher"]
        intake.after_commit(
            db.session, "publish", lambda: intake.publish(db.session, publisher, job)
        )
    return respond(response)


def _own_job(job_id: int) -> EmailJob | None:
    return db.session.scalar(
        select(EmailJob).where(EmailJob.job_id == job_id, EmailJob.api_key_id == g.api_key.id)
    )


@bp.get("/emails/<int:job_id>")
@requires_scope("read")
def get_email(job_id: int):
    job = _own_job(job_id)
    if job is None:
        return error_response(404, f"no email with id {job_id}", "id")
    attempts = db.session.scalars(
        select(EmailAttempt).where(EmailAttempt.job_id == job_id).order_by(EmailAttempt.id)
    ).all()
    return job_json(job, list(attempts), _last_events(job_id), _latest_bounce(job_id))


def _last_events(job_id: int) -> list[EmailEvent]:
    """The job's last EVENTS_SHOWN events, oldest first."""
    newest = db.session.scalars(
        select(EmailEvent)
        .where(EmailEvent.job_id == job_id)
        .order_by(EmailEvent.at.desc(), EmailEvent.id.desc())
        .limit(EVENTS_SHOWN)
    ).all()
    return list(reversed(newest))


def _latest_bounce(job_id: int) -> InboundReport | None:
    return db.session.scalar(
        select(InboundReport)
        .where(
            InboundReport.job_id == job_id,
            InboundReport.state == ReportState.APPLIED,
            InboundReport.kind.in_(BOUNCE_KINDS),
        )
        .order_by(InboundReport.id.desc())
        .limit(1)
    )


@bp.post("/emails/<int:job_id>/cancel")
@requires_scope("send")
def cancel_email(job_id: int):
    job = _own_job(job_id)
    if job is None:
        return error_response(404, f"no email with id {job_id}", "id")
    if jobstore.cancel(db.session, job_id, g.api_key.id, utcnow()):
        return {"id": job_id, "status": "CANCELLED"}
    db.session.refresh(job)
    return error_response(409, f"email {job_id} is {job.status} and cannot be cancelled now", "id")
