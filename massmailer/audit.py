"""The audit log: each change to a suppression or an API key, with who made it and when.

The entry is added to the caller's session, so it commits (or rolls back) with the change.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from massmailer.models import ApiKey, AuditEntry
from massmailer.models.types import utcnow

OPERATOR = "operator"
UNSUBSCRIBE_LINK = "unsubscribe-link"


def record(
    session: Session,
    action: str,
    target: str,
    *,
    key: ApiKey | None = None,
    actor: str = OPERATOR,
    detail: str | None = None,
) -> None:
    """Add an entry for action on target, made by key (or by actor when no key made it)."""
    session.add(
        AuditEntry(
            at=utcnow(),
            api_key_id=key.id if key is not None else None,
            actor=f"key:{key.name}" if key is not None else actor,
            action=action,
            target=target[:320],
            detail=detail,
        )
    )
