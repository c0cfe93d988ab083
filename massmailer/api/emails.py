"""POST /v1/emails, GET /v1/emails/<id>, POST /v1/emails/<id>/cancel."""

from __future__ import annotations

from flask import Blueprint, current_app, g, request
from sqlalchemy import select

from massmailer import intake, jobstore
from massmailer.api.errors import error_response
from massmailer.api.serialize import job_json
from massmailer.extensions import db
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


@bp.post("/emails")
def create_email():
    settings = current_app.extensions["massmailer.settings"]
    email = parse_email_request(
        json_body(), default_from=settings.default_from, max_body_bytes=settings.max_body_bytes
    )
    publisher = current_app.extensions["massmailer.publisher"]
    job = intake.accept(db.session, publisher, email, api_key_id=g.api_key.id, settings=settings)
    return {"id": job.job_id, "status": job.status}, 202


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
