"""Turn a claimed job into the message to send: parts (rendered for batch jobs), headers, sender."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from massmailer.batches import UNSUBSCRIBE_VAR, BatchTemplates
from massmailer.bounces.verp import VerpSigner
from massmailer.config import Settings
from massmailer.delivery.message import OutgoingMessage, verp_sender
from massmailer.jobstore import ClaimedJob
from massmailer.templates import CompiledTemplate, TemplateError
from massmailer.unsubscribe import UnsubscribeLinks


class TemplateUnavailable(RuntimeError):
    """compose() got a batch job whose template load() did not fetch: a bug, not bad data."""


class Composer:
    """Compose jobs' messages; compiled batch templates are cached for this process."""

    def __init__(self, settings: Settings) -> None:
        self._bounce_address = settings.bounce_address
        self._verp = VerpSigner(settings.secret_key)
        self._templates = BatchTemplates(settings.max_body_bytes)
        # The templates of the jobs being sent, keyed by id(job) and dropped when the job object
        # is: the shared cache keeps only 64 batches, and a chunk (or several at once) can span
        # more, so what load() fetched is held here until the jobs are done with.
        self._held: dict[int, CompiledTemplate | TemplateError] = {}
        self._unsubscribe = UnsubscribeLinks(
            settings.secret_key, settings.public_url, settings.unsubscribe_mailto
        )

    def load(self, session: Session, jobs: Iterable[ClaimedJob]) -> None:
        """Fetch and compile the templates of the jobs' batches not yet cached; hold them."""
        batch_jobs = [j for j in jobs if j.batch_id is not None]
        found = self._templates.load(session, (j.batch_id for j in batch_jobs))
        for job in batch_jobs:
            template = found.get(job.batch_id)  # type: ignore[arg-type]
            if template is not None:
                key = id(job)
                self._held[key] = template
                weakref.finalize(job, self._held.pop, key, None)

    def mail_from(self, job: ClaimedJob) -> str:
        """The envelope sender: the bounce address with the job id and its MAC (VERP), else
        the sender."""
        bounce = self._bounce_address
        if not bounce:
            return job.sender
        return verp_sender(bounce, job.job_id, self._verp.mac(job.job_id))

    def compose(self, job: ClaimedJob, date: datetime) -> OutgoingMessage:
        """The message for a job; a batch job's parts are rendered here from its template.

        A TemplateError is a ValueError: the caller fails the job as bad data, without a retry.
        Only a template that does not compile or render raises it, never a cache eviction.
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
            rendered = self._template(job).render(variables, ("text", "html"))
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

    def _template(self, job: ClaimedJob) -> CompiledTemplate:
        found = self._held.get(id(job))
        if found is None:
            found = self._templates.get(job.batch_id)  # type: ignore[arg-type]
        if found is None:
            raise TemplateUnavailable(f"the template of batch {job.batch_id} was not loaded")
        if isinstance(found, TemplateError):
            raise found
        return found
