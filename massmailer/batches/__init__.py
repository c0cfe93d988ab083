"""Batches: one template, many recipients with their variables; one job per recipient.

Intake parses the request and screens each recipient (intake.py); the batch and its jobs are
stored with one multi-row INSERT in the caller's transaction and published in chunks after the
commit (store.py). Delivery renders text and html again when it sends, from the batch's template
(compiled once per process, cache.py) and the job's variables.
"""

from massmailer.batches.cache import BatchTemplates
from massmailer.batches.intake import (
    UNSUBSCRIBE_VAR,
    BatchRequest,
    Recipient,
    Rejection,
    Screened,
    TooManyRecipients,
    parse_batch_request,
    screen,
)
from massmailer.batches.progress import cancel, own_batch, progress
from massmailer.batches.store import StoredBatch, publish, refresh_statistics, store

__all__ = [
    "UNSUBSCRIBE_VAR",
    "BatchRequest",
    "BatchTemplates",
    "Recipient",
    "Rejection",
    "Screened",
    "StoredBatch",
    "TooManyRecipients",
    "cancel",
    "own_batch",
    "parse_batch_request",
    "progress",
    "publish",
    "refresh_statistics",
    "screen",
    "store",
]
