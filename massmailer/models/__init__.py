"""The tables; importing this package registers them with the metadata."""

from massmailer.models.api_keys import ApiKey
from massmailer.models.attempts import EmailAttempt
from massmailer.models.batches import Batch
from massmailer.models.idempotency import IdempotencyKey
from massmailer.models.jobs import EmailJob, Status
from massmailer.models.suppressions import Suppression

__all__ = [
    "ApiKey",
    "Batch",
    "EmailAttempt",
    "EmailJob",
    "IdempotencyKey",
    "Status",
    "Suppression",
]
