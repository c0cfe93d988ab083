"""POST /v1/emails, GET /v1/emails/<id>, POST /v1/emails/<id>/cancel."""

from __future__ import annotations

from flask import Blueprint, current_app, g, request
from sqlalchemy import select

from massmailer import intake, jobstore
from massmailer.api.errors import error_response
from massmailer.api.serialize import job_json
from massmailer.extensions import db
from massmailer.idempotency import Idempotency, StoredResponse, fingerprint, parse_key
from massmailer.models import EmailAttempt, EmailJob
from massmailer.models.types import utcnow
from massmailer.validation import ValidationError, parse_email_request

bp = Blueprint("emails", __name__)


def json_body() -> object:
    """The request's JSON document, or a 400 naming the body."""
    payload = request.get_json(silent=True)
    if payload is None:
        raise ValidationError(
            "body", "the request body must be JSON (Content-Type: application/json)"
        )
    return payload


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
def create_email():
    settings = current_app.extensions["massmailer.settings"]
    payload = json_body()
    guard = idempotency_for(payload, settings)
    earlier = guard.earlier()
    if earlier is not None:
        return respond(earlier)
    email = parse_email_request(
        payload, default_from=settings.default_from, max_body_bytes=settings.max_body_bytes
    )

    def create():
        job = intake.store(db.session, email, api_key_id=g.api_key.id, settings=settings)
        return 202, {"id": job.job_id, "status": job.status}, job

    response, job = guard.run(create)
    if job is not None:
        intake.publish(db.session, current_app.extensions["massmailer.publisher"], job)
    return respond(response)


def _own_job(job_id: int) -> EmailJob | None:
    return db.session.scalar(
        select(EmailJob).where(EmailJob.job_id == job_id, EmailJob.api_key_id == g.api_key.id)
    )


@bp.get("/emails/<int:job_id>")
def get_email(job_id: int):
    job = _own_job(job_id)
    if job is None:
        return error_response(404, f"no email with id {job_id}", "id")
    attempts = db.session.scalars(
        select(EmailAttempt).where(EmailAttempt.job_id == job_id).order_by(EmailAttempt.id)
    ).all()
    return job_json(job, list(attempts))


@bp.post("/emails/<int:job_id>/cancel")
def cancel_email(job_id: int):
    job = _own_job(job_id)
    if job is None:
        return error_response(404, f"no email with id {job_id}", "id")
    if jobstore.cancel(db.session, job_id, g.api_key.id, utcnow()):
        return {"id": job_id, "status": "CANCELLED"}
    db.session.refresh(job)
    return error_response(409, f"email {job_id} is {job.status} and cannot be cancelled now", "id")
