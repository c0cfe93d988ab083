"""The tables; importing this package registers them with the metadata."""

from massmailer.models.api_keys import ApiKey
from massmailer.models.attempts import EmailAttempt
from massmailer.models.audit import AuditEntry
from massmailer.models.batches import Batch
from massmailer.models.events import EmailEvent, EventType
from massmailer.models.idempotency import IdempotencyKey
from massmailer.models.inbound_reports import InboundReport, ReportState
from massmailer.models.job_counts import JobCount
from massmailer.models.jobs import EmailJob, Status
from massmailer.models.suppressions import Suppression
from massmailer.models.webhooks import (
    WebhookBatchNotified,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookOutbox,
)

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Batch",
    "EmailAttempt",
    "EmailEvent",
    "EmailJob",
    "EventType",
    "IdempotencyKey",
    "InboundReport",
    "JobCount",
    "ReportState",
    "Status",
    "Suppression",
    "WebhookBatchNotified",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookOutbox",
]
