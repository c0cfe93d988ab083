"""Insert a batch's jobs with PostgreSQL COPY, in the session's open transaction.

COPY takes rows as one text stream and skips the per-row statement work of INSERT; the job ids are
drawn from the table's own sequence first (one query), so no RETURNING is needed and the ids are
known before the rows land. The rows are made as the server reads them, so it stores the first ones
while the rest are still being screened. Nothing is committed here: the caller's transaction holds
the idempotency row, the batch row and these jobs together.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from massmailer.batches.intake import Recipient
from massmailer.delivery.message import make_message_id, message_id_prefix
from massmailer.models import Batch, Status

COLUMNS = (
    "job_id", "recipient", "recipient_name", "sender", "sender_name", "subject", "body",
    "priority", "category", "send_at", "status", "attempts", "message_id", "api_key_id",
    "batch_id", "template_vars", "created_at", "updated_at", "enqueued_at",
)  # fmt: skip
_COPY = f"COPY email_jobs ({', '.join(COLUMNS)}) FROM STDIN"
_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('email_jobs', 'job_id')) FROM generate_series(1, :n)"
)
NULL = r"\N"
# COPY's text format: backslash, and the row and column separators, are escaped.
_SPECIAL = re.compile(r"[\\\t\n\r]")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# Characters per read, each sent to the server at once: small enough that PostgreSQL stores the
# first rows while the rest are screened, large enough that a read costs little.
_COPY_BUFFER = 1 << 16


def copy_jobs(
    session: Session,
    batch: Batch,
    accepted: Iterable[Recipient],
    most: int,
    domain: str,
    now: datetime,
    *,
    enqueued: bool,
) -> list[int]:
    """COPY one PENDING job per accepted recipient; return their ids in recipient order.

    `accepted` is read as PostgreSQL takes the rows, at most `most` of them: ids and Message-IDs
    are drawn for that many, and the ones left over are never used.
    `enqueued`: stamp them as enqueued already (the batch's `unconfirmed_since` stands for the
    publish until it is confirmed), rather than with an UPDATE of every job afterwards.
    """
    ids = sorted(session.execute(_NEXT_IDS, {"n": most}).scalars())
    stream = _LineReader(_rows(batch, accepted, ids, domain, now, enqueued))
    cursor = session.connection().connection.cursor()
    try:
        cursor.copy_expert(_COPY, stream, size=_COPY_BUFFER)
    finally:
        cursor.close()
    if stream.error is not None:
        raise stream.error  # the caller rolls back the rows copied before it
    return ids[: stream.lines]  # one line per job, given the ids in order


class _LineReader:
    """The file copy_expert reads: each read() makes only the lines it returns.

    `lines` counts the lines made. An error while making them (a refused request) ends the
    stream and is kept in `error` for the caller to raise: psycopg2 would turn it into
    QueryCanceled and lose what it was.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.lines = 0
        self.error: Exception | None = None

    def read(self, size: int = -1) -> str:
        parts: list[str] = []
        length = 0
        try:
            for line in self._lines:
                parts.append(line)
                self.lines += 1
                length += len(line)
                if 0 <= size <= length:
                    break
        except Exception as exc:
            self.error = exc
            return ""
        return "".join(parts)


def _rows(
    batch: Batch,
    accepted: Iterable[Recipient],
    ids: list[int],
    domain: str,
    now: datetime,
    enqueued: bool,
) -> Iterator[str]:
    stamp = now.isoformat()
    times = "\t".join((stamp, stamp, stamp if enqueued else NULL))
    # The columns every job of the batch shares, escaped once; each row adds its own.
    shared_head = "\t".join((_field(batch.sender), _field(batch.sender_name)))
    shared_mid = "\t".join(
        (
            "",  # body: rendered when sent, from the batch's template
            str(batch.priority),
            _field(batch.category),
            _field(batch.send_at.isoformat() if batch.send_at else None),
            Status.PENDING.value,
            "0",
        )
    )
    shared_tail = "\t".join((_field(batch.api_key_id), str(batch.id)))
    message_ids = _message_ids(domain, len(ids))
    # The recipients first: zip must read them to their end (where the screening's own final
    # checks run), not stop when the ids, drawn for every candidate, run out.
    for r, job_id, message_id in zip(accepted, ids, message_ids, strict=False):
        yield (
            "\t".join(
                (
                    str(job_id),
                    _field(r.to_addr),
                    _field(r.to_name),
                    shared_head,
                    _field(r.subject),
                    shared_mid,
                    message_id,
                    shared_tail,
                    _field(r.variables_json),
                    times,
                )
            )
            + "\n"
        )


def _field(value: object) -> str:
    """One value in COPY's text format."""
    if value is None:
        return NULL
    value = str(value)
    return value.translate(_ESCAPES) if _SPECIAL.search(value) else value


def _message_ids(domain: str, count: int) -> list[str]:
    """count Message-IDs like make_message_id's, from one read of the system's random source."""
    make_message_id(domain)  # refuses a domain that is not an ASCII host name
    prefix = message_id_prefix()
    digits = secrets.token_hex(10 * count)
    return [f"<{prefix}{digits[i : i + 20]}@{domain}>" for i in range(0, 20 * count, 20)]
