"""/v1/suppressions: list (paginated), look up, add and remove suppressed addresses.

The list is global, not per API key: an address that bounced or unsubscribed is not mailed by
any client of this service, which sends under one identity. Only keys with the `suppressions`
scope may read or change it, and every change goes to the audit log with the key.
"""

from __future__ import annotations

from flask import Blueprint, g, request
from sqlalchemy import delete, select

from massmailer import audit, suppressions
from massmailer.api.auth import requires_scope
from massmailer.api.body import json_body
from massmailer.api.errors import error_response
from massmailer.api.serialize import rfc3339
from massmailer.extensions import db
from massmailer.models import Suppression
from massmailer.models.types import utcnow
from massmailer.validation import ValidationError, check_header_text, parse_address

bp = Blueprint("suppressions", __name__)

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_DETAIL = 1000


def suppression_json(row: Suppression) -> dict:
    """One suppressed address as the API shows it."""
    return {
        "email": row.email,
        "reason": row.reason,
        "detail": row.detail,
        "created_at": rfc3339(row.created_at),
    }


@bp.get("/suppressions")
@requires_scope("suppressions", query=("limit", "after", "reason"))
def list_suppressions():
    """Addresses in order; pass the answer's `next` as `after` for the following page."""
    limit = _limit(request.args.get("limit"))
    query = select(Suppression).order_by(Suppression.email).limit(limit + 1)
    after = request.args.get("after")
    if after:
        query = query.where(Suppression.email > after.lower())
    reason = request.args.get("reason")
    if reason is not None:
        query = query.where(Suppression.reason == _reason(reason, "reason"))
    rows = list(db.session.scalars(query))
    page = rows[:limit]
    following = page[-1].email if len(rows) > limit else None
    return {"items": [suppression_json(r) for r in page], "next": following}


@bp.get("/suppressions/<path:email>")
@requires_scope("suppressions")
def get_suppression(email: str):
    row = db.session.get(Suppression, email.lower())
    if row is None:
        return error_response(404, f"{email} is not suppressed", "email")
    return suppression_json(row)


@bp.post("/suppressions")
@requires_scope("suppressions")
def add_suppression():
    """Suppress an address (reason manual unless given); an existing entry keeps its reason."""
    payload = json_body()
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    for key in payload:
        if key not in ("email", "reason", "detail"):
            raise ValidationError(str(key)[:40], "is not a known field (email, reason, detail)")
    _, address = parse_address(payload.get("email"), "email")
    reason = _reason(payload.get("reason", "manual"), "reason")
    detail = payload.get("detail")
    if detail is not None:
        detail = check_header_text(detail, "detail", MAX_DETAIL)
    existed = db.session.get(Suppression, address.lower()) is not None
    suppressions.add_many(db.session, [(address, reason, detail)], utcnow())
    if not existed:
        audit.record(db.session, "suppression.add", address.lower(), key=g.api_key, detail=reason)
    db.session.commit()
    row = db.session.get(Suppression, address.lower())
    return suppression_json(row), 200 if existed else 201


@bp.delete("/suppressions/<path:email>")
@requires_scope("suppressions")
def remove_suppression(email: str):
    result = db.session.execute(delete(Suppression).where(Suppression.email == email.lower()))
    if result.rowcount == 0:
        db.session.rollback()
        return error_response(404, f"{email} is not suppressed", "email")
    audit.record(db.session, "suppression.remove", email.lower(), key=g.api_key)
    db.session.commit()
    return "", 204


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationError("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _reason(value: object, field: str) -> str:
    if value not in REASONS:
        raise ValidationError(field, f"must be one of: {', '.join(REASONS)}")
    return value
