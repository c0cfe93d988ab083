"""POST /v1/batches, GET /v1/batches/<id>, POST /v1/batches/<id>/cancel."""

from __future__ import annotations

from flask import Blueprint, current_app, g, request

from massmailer import batches, intake
from massmailer.api.auth import check_sender, requires_scope, take_recipients
from massmailer.api.body import integral_numbers, json_body
from massmailer.api.emails import idempotency_for, respond
from massmailer.api.errors import error_response
from massmailer.extensions import db
from massmailer.heap import collection_paused
from massmailer.models.types import utcnow

bp = Blueprint("batches", __name__)


@bp.post("/batches")
@requires_scope("send")
def create_batch():
    with collection_paused():  # tens of thousands of acyclic objects: heap.py
        return _create_batch()


def _create_batch():
    settings = current_app.extensions["massmailer.settings"]
    # A batch body is far larger than a single email's; allow it on this route only.
    request.max_content_length = settings.max_batch_bytes
    payload = json_body()
    integral_numbers(payload, "priority")
    guard = idempotency_for(payload, settings)
    earlier = guard.earlier()
    if earlier is not None:
        return respond(earlier)
    batch = batches.parse_batch_request(
        payload,
        default_from=settings.default_from,
        max_body_bytes=settings.max_body_bytes,
        max_recipients=settings.max_batch_recipients,
    )
    check_sender(batch.from_addr)
    screening = batches.screen(db.session, batch, settings=settings)

    def create():
        stored = batches.store(
            db.session, batch, screening, api_key_id=g.api_key.id, settings=settings
        )
        # Counted once screened; over the cap, the jobs just copied are rolled back.
        take_recipients(len(stored.job_ids))
        return 202, stored.response(), stored

    response, stored = guard.run(create)
    if stored is not None:
        publisher = current_app.extensions["massmailer.publisher"]
        intake.after_commit(
            db.session,
            "publish",
            lambda: batches.publish(db.session, publisher, stored, chunk_size=settings.chunk_size),
        )
        # No ANALYZE here: the sweep refreshes email_jobs' statistics (batches/statistics.py).
    return respond(response)


@bp.get("/batches/<int:batch_id>")
@requires_scope("read")
def get_batch(batch_id: int):
    batch = batches.own_batch(db.session, batch_id, g.api_key.id)
    if batch is None:
        return error_response(404, f"no batch with id {batch_id}", "id")
    return batches.progress(db.session, batch, utcnow())


@bp.post("/batches/<int:batch_id>/cancel")
@requires_scope("send")
def cancel_batch(batch_id: int):
    batch = batches.own_batch(db.session, batch_id, g.api_key.id)
    if batch is None:
        return error_response(404, f"no batch with id {batch_id}", "id")
    return batches.cancel(db.session, batch, utcnow())
