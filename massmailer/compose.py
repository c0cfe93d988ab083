"""Turn a claimed job into the message to send: parts (rendered for batch jobs), headers, sender."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from massmailer.batches import UNSUBSCRIBE_VAR, BatchTemplates
from massmailer.config import Settings
from massmailer.jobstore import ClaimedJob
from massmailer.message import OutgoingMessage, verp_sender
from massmailer.unsubscribe import UnsubscribeLinks


class Composer:
    """Compose jobs' messages; compiled batch templates are cached for this process."""

    def __init__(self, settings: Settings) -> None:
        self._bounce_address = settings.bounce_address
        self._templates = BatchTemplates(settings.max_body_bytes)
        self._unsubscribe = UnsubscribeLinks(
            settings.secret_key, settings.public_url, settings.unsubscribe_mailto
        )

    def load(self, session: Session, jobs: Iterable[ClaimedJob]) -> None:
        """Fetch and compile the templates of the jobs' batches not yet cached."""
        self._templates.load(session, (j.batch_id for j in jobs))

    def mail_from(self, job: ClaimedJob) -> str:
        """The envelope sender: the bounce address with the job id (VERP), else the sender."""
        bounce = self._bounce_address
        return verp_sender(bounce, job.job_id) if bounce else job.sender

    def compose(self, job: ClaimedJob, date: datetime) -> OutgoingMessage:
        """The message for a job; a batch job's parts are rendered here from its template.

        A TemplateError is a ValueError: the caller fails the job as bad data, without a retry.
        """
        text, html = job.body or None, job.html
        headers = tuple((name, value) for name, value in (job.headers or ()))
        link = None
        if job.category == "marketing":
            link = self._unsubscribe.url(job.recipient, job.job_id)
            headers += self._unsubscribe.headers(link)
        if job.batch_id is not None:
            variables = dict(job.template_vars or {})
            if link is not None:
                variables[UNSUBSCRIBE_VAR] = link
            rendered = self._templates.get(job.batch_id).render(variables, ("text", "html"))
            text, html = rendered.text, rendered.html
        return OutgoingMessage(
            from_addr=job.sender,
            from_name=job.sender_name,
            to_addr=job.recipient,
            to_name=job.recipient_name,
            subject=job.subject,
            text=text,
            html=html,
            message_id=job.message_id,
            date=date,
            headers=headers,
        )
