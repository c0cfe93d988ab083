"""The outbox in PostgreSQL: claim due messages, record each try, schedule the retry.

Every change is one guarded statement: a claim sets a token and a lease on rows nobody holds,
and a try's outcome is written only under that token. Retries wait in PostgreSQL
(`next_attempt_at`), never in a Celery countdown (design invariant 3).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from massmailer.models import WebhookDelivery, WebhookEndpoint, WebhookOutbox
from massmailer.models.types import utcnow
from massmailer.webhooks import TEST_TYPE, client, policy, signing
from massmailer.webhooks.guard import RefusedTarget, resolve_target

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60  # longer than a try (15 s): a lost task's row is due again after it
MAX_IN_FLIGHT_PER_ENDPOINT = 8  # the default of MASSMAILER_WEBHOOK_MAX_IN_FLIGHT
CLAIM_LIMIT = 200
# How long one task keeps taking an endpoint's next message after a 2xx (see deliver_in_turn):
# short, so that one busy endpoint cannot hold the webhook threads other endpoints wait for.
TURN_SECONDS = 5.0

# Due rows (pending and due, or sending with a lapsed lease), locked without waiting for other
# dispatchers; at most MAX_IN_FLIGHT per endpoint counting the ones still leased.
_CLAIM = text("""
WITH due AS (
  SELECT id, endpoint_id, next_attempt_at FROM webhook_outbox
  WHERE next_attempt_at <= now() AND state IN ('pending', 'sending')
    AND (state = 'pending' OR lease_until < now())
    AND (CAST(:endpoint_id AS bigint) IS NULL OR endpoint_id = :endpoint_id)
  ORDER BY next_attempt_at LIMIT :limit
  FOR UPDATE SKIP LOCKED
), busy AS (
  SELECT endpoint_id, count(*) AS n FROM webhook_outbox
  WHERE state = 'sending' AND lease_until >= now()
    AND endpoint_id IN (SELECT endpoint_id FROM due)
  GROUP BY endpoint_id
), ranked AS (
  SELECT due.id, row_number() OVER (PARTITION BY due.endpoint_id
                                    ORDER BY due.next_attempt_at, due.id)
                 + coalesce(busy.n, 0) AS slot
  FROM due LEFT JOIN busy USING (endpoint_id)
)
UPDATE webhook_outbox o
SET state = 'sending', claim_token = :token, lease_until = now() + make_interval(secs => :lease)
FROM ranked WHERE o.id = ranked.id AND ranked.slot <= :max_in_flight
RETURNING o.id
""")

# batch.completed: a batch none of whose jobs is PENDING any more (job_counts, kept by triggers),
# announced once (webhook_batches_notified) to the enabled endpoints of its key that want it.
_BATCHES_COMPLETED = text("""
WITH done AS (
  INSERT INTO webhook_batches_notified (batch_id, at)
  SELECT b.id, now() FROM batches b
  WHERE b.created_at > now() - interval '3 days'
    AND NOT EXISTS (SELECT 1 FROM webhook_batches_notified n WHERE n.batch_id = b.id)
    AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.api_key_id = b.api_key_id
                AND w.enabled AND position(' batch.completed ' IN ' ' || w.events || ' ') > 0)
    AND coalesce((SELECT sum(c.n) FROM job_counts c
                  WHERE c.batch_id = b.id AND c.status = 'PENDING'), 0) = 0
  ON CONFLICT DO NOTHING
  RETURNING batch_id
)
INSERT INTO webhook_outbox (endpoint_id, type, body, created_at, next_attempt_at)
SELECT w.id, 'batch.completed',
       json_build_object(
         'type', 'batch.completed',
         'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
         'data', json_build_object(
           'batch_id', b.id, 'accepted', b.accepted, 'rejected', b.rejected,
           'counts', (SELECT coalesce(json_object_agg(s.status, s.n), '{}'::json) FROM
                       (SELECT c.status, sum(c.n) AS n FROM job_counts c
                        WHERE c.batch_id = b.id GROUP BY c.status
                        HAVING sum(c.n) <> 0) s)))::text,
       now(), now()
FROM done JOIN batches b ON b.id = done.batch_id
JOIN webhook_endpoints w ON w.api_key_id = b.api_key_id AND w.enabled
     AND position(' batch.completed ' IN ' ' || w.events || ' ') > 0
""")


def claim_due(
    session: Session, max_in_flight: int = MAX_IN_FLIGHT_PER_ENDPOINT
) -> tuple[str, list[int]]:
    """Claim due outbox rows (bounded per endpoint); return the claim token and their ids."""
    token = secrets.token_hex(16)
    params = _claim_params(token, CLAIM_LIMIT, max_in_flight, endpoint_id=None)
    ids = list(session.scalars(_CLAIM, params))
    session.commit()
    return token, ids


def _claim_params(token: str, limit: int, max_in_flight: int, endpoint_id: int | None) -> dict:
    return {
        "token": token,
        "lease": LEASE_SECONDS,
        "limit": limit,
        "max_in_flight": max_in_flight,
        "endpoint_id": endpoint_id,
    }


def enqueue_completed_batches(session: Session) -> int:
    """Put `batch.completed` in the outbox for newly completed batches; return how many rows."""
    count = session.execute(_BATCHES_COMPLETED).rowcount
    session.commit()
    return count


def enqueue_test(session: Session, endpoint: WebhookEndpoint) -> WebhookOutbox:
    """Put a `webhook.test` message for this endpoint in the outbox. No commit."""
    now = utcnow()
    body = {
        "type": TEST_TYPE,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": {"endpoint_id": endpoint.id},
    }
    row = WebhookOutbox(
        endpoint_id=endpoint.id,
        type=TEST_TYPE,
        body=json.dumps(body, separators=(",", ":")),
        state="pending",
        attempts=0,
        created_at=now,
        next_attempt_at=now,
    )
    session.add(row)
    session.flush()
    return row


def deliver(session: Session, outbox_id: int, token: str, *, allow_private: bool) -> str | None:
    """Make one try of a claimed message and record it; return the outcome (None: not ours)."""
    message = _claimed(session, outbox_id, token)
    if message is None:
        return None
    outcome, result = _send(message, allow_private)
    return _record(session, message, token, result, outcome, None)[0]


@dataclass(frozen=True)
class Turn:
    """What one task did: the outcome of each try, in order, and the message it claimed for the
    next task when its time was up (None: the endpoint failed or nothing more was due)."""

    outcomes: list[str | None]
    handed_on: int | None


def deliver_in_turn(
    session: Session,
    outbox_id: int,
    token: str,
    *,
    allow_private: bool,
    max_in_flight: int = MAX_IN_FLIGHT_PER_ENDPOINT,
    turn_seconds: float = TURN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Turn:
    """Try a claimed message, then, while its endpoint answers 2xx, claim and try its next one.

    The dispatch tick alone would hand an endpoint a few messages every few seconds, far below
    the rate events are made at. Taking the next message into the slot the last one freed keeps
    the in-flight bound per endpoint while a fast receiver gets messages as fast as it answers.
    A failing endpoint ends the turn at once: its retries wait in `next_attempt_at`. When the
    turn's time is up, the next message is claimed for a new task (the caller queues it behind
    other endpoints' tasks), so the slot stays busy without one endpoint keeping a thread.
    """
    ends_at = clock() + turn_seconds
    outcomes: list[str | None] = []
    message = _claimed(session, outbox_id, token)
    while message is not None:
        outcome, result = _send(message, allow_private)
        # Chain only after a 2xx: the next claim shares the outcome's transaction.
        chain = max_in_flight if outcome == "delivered" else None
        outcome, next_id = _record(session, message, token, result, outcome, chain)
        outcomes.append(outcome)
        if next_id is None:
            break
        if clock() >= ends_at:
            return Turn(outcomes, next_id)
        message = _claimed(session, next_id, token)
    else:
        outcomes.append(None)  # not ours (any more), or its endpoint was deleted
    return Turn(outcomes, None)


@dataclass(frozen=True)
class _Message:
    id: int
    body: str
    attempts: int
    created_at: datetime
    endpoint_id: int
    url: str
    secret: str
    enabled: bool


_o, _e = WebhookOutbox.__table__, WebhookEndpoint.__table__
_CLAIMED = (
    select(_o.c.id, _o.c.body, _o.c.attempts, _o.c.created_at, _o.c.endpoint_id)
    .add_columns(_e.c.url, _e.c.secret, _e.c.enabled)
    .join(_e, _e.c.id == _o.c.endpoint_id)
    .where(_o.c.id == bindparam("id"), _o.c.claim_token == bindparam("token"))
    .where(_o.c.state == "sending")
)


def _claimed(session: Session, outbox_id: int, token: str) -> _Message | None:
    """The message if this token holds it and its endpoint still exists. Ends the transaction,
    so none is open across the HTTP try."""
    row = session.execute(_CLAIMED, {"id": outbox_id, "token": token}).first()
    session.commit()
    return None if row is None else _Message(*row)


def _send(message: _Message, allow_private: bool) -> tuple[str, client.TryResult]:
    if not message.enabled:
        return "failed", client.TryResult(None, None, "endpoint disabled", 0)
    result = _try(message, allow_private)
    return policy.outcome_of(result.status), result


def _try(message: _Message, allow_private: bool) -> client.TryResult:
    try:
        target = resolve_target(message.url, allow_private=allow_private)
    except RefusedTarget as exc:
        return client.TryResult(None, None, f"refused: {exc}", 0)
    body = message.body.encode("utf-8")
    msg_id = f"msg_{message.id}"
    headers = signing.headers(message.secret, msg_id, int(utcnow().timestamp()), body)
    return client.post(target, body, headers)


def _record(
    session: Session,
    message: _Message,
    token: str,
    result: client.TryResult,
    outcome: str,
    chain_in_flight: int | None,
) -> tuple[str, int | None]:
    """Write the try's outcome under the token; with chain_in_flight, claim the endpoint's next
    due message in the same transaction. Return the outcome and the next message's id."""
    now = utcnow()
    attempt = message.attempts + 1
    values: dict = {"attempts": attempt, "claim_token": None, "lease_until": None}
    if outcome == "retry":
        retry_after = policy.parse_retry_after(result.retry_after)
        delay = policy.backoff_delay(attempt, retry_after)
        age = (now - message.created_at).total_seconds()
        if policy.gives_up(age, delay):
            outcome = "failed"
        else:
            values |= {"state": "pending", "next_attempt_at": now + timedelta(seconds=delay)}
    if outcome != "retry":
        values["state"] = "delivered" if outcome == "delivered" else "failed"
    ours = (_o.c.id == message.id) & (_o.c.claim_token == token)
    if not session.execute(update(_o).where(ours).values(values)).rowcount:
        session.rollback()  # the lease lapsed and another try took the row: its outcome counts
        return "lost", None
    session.execute(
        insert(WebhookDelivery.__table__).values(
            outbox_id=message.id,
            endpoint_id=message.endpoint_id,
            attempt=attempt,
            at=now,
            outcome=outcome,
            status_code=result.status,
            error=result.error,
            duration_ms=result.duration_ms,
        )
    )
    if outcome == "disabled":
        _disable(session, message.endpoint_id, "the receiver answered 410 Gone")
    next_ids = []
    if chain_in_flight is not None:
        params = _claim_params(token, 1, chain_in_flight, message.endpoint_id)
        next_ids = list(session.scalars(_CLAIM, params))
    session.commit()
    logger.info(
        "event=webhook_try outbox_id=%d endpoint_id=%d attempt=%d outcome=%s status=%s",
        message.id,
        message.endpoint_id,
        attempt,
        outcome,
        result.status,
    )
    return outcome, (next_ids[0] if next_ids else None)


def _disable(session: Session, endpoint_id: int, reason: str) -> None:
    session.query(WebhookEndpoint).filter(WebhookEndpoint.id == endpoint_id).update(
        {"enabled": False, "disabled_reason": reason}, synchronize_session=False
    )
    # Its waiting messages will not be tried again.
    session.query(WebhookOutbox).filter(
        WebhookOutbox.endpoint_id == endpoint_id, WebhookOutbox.state == "pending"
    ).update({"state": "failed"}, synchronize_session=False)
