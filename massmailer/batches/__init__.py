"""Batches: one template, many recipients with their variables; one job per recipient.

Intake parses the request and screens each recipient (intake.py) against what the template needs,
without rendering it (variables.py, subject.py, addresses.py); the batch and its jobs are stored in
the caller's transaction, the jobs by COPY (copy.py) as they are screened, and published in chunks
after the commit (store.py). Delivery renders text and html when it sends, from the batch's template
(compiled once per process, cache.py) and the job's variables. The sweep keeps the table's
statistics fresh (statistics.py).
"""

from massmailer.batches.cache import BatchTemplates
from massmailer.batches.intake import (
    UNSUBSCRIBE_VAR,
    BatchRequest,
    Recipient,
    Rejection,
    Screening,
    TooManyRecipients,
    parse_batch_request,
    screen,
)
from massmailer.batches.progress import cancel, own_batch, progress
from massmailer.batches.statistics import refresh_if_stale
from massmailer.batches.store import StoredBatch, publish, store

__all__ = [
    "UNSUBSCRIBE_VAR",
    "BatchRequest",
    "BatchTemplates",
    "Recipient",
    "Rejection",
    "Screening",
    "StoredBatch",
    "TooManyRecipients",
    "cancel",
    "own_batch",
    "parse_batch_request",
    "progress",
    "publish",
    "refresh_if_stale",
    "screen",
    "store",
]
