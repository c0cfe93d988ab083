"""The tables; importing this package registers them with the metadata."""

from massmailer.models.api_keys import ApiKey
from massmailer.models.attempts import EmailAttempt
from massmailer.models.jobs import EmailJob, Status
from massmailer.models.suppressions import Suppression

__all__ = ["ApiKey", "EmailAttempt", "EmailJob", "Status", "Suppression"]
