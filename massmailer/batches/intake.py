"""Batch intake: parse a request, then screen each recipient as the batch is stored.

Screening refuses a recipient for a bad address, a duplicate in the request, a suppressed
address, variables that miss a name the template certainly needs or exceed the bounds
(variables.py), or a subject that does not render into a header. The last three are judged
while the jobs stream into PostgreSQL (`Screening.accepted`, copy.py). Text and html are rendered
only when sent, where the sandbox's budget is authoritative.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, any_, cast, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from massmailer import suppressions
from massmailer.batches.addresses import parse_recipient
from massmailer.batches.subject import SubjectRenderer
from massmailer.batches.variables import TemplateVariables, VariablesError, encode_variables
from massmailer.config import Settings
from massmailer.templates import (
    CompiledTemplate,
    TemplateError,
    TemplateSource,
    compile_template,
)
from massmailer.validation import (
    MAX_SUBJECT,
    ValidationError,
    check_header_text,
    parse_email_request,
    refuse_nulls,
)

BATCH_FIELDS = ("template", "recipients", "from", "priority", "category", "send_at")
TEMPLATE_FIELDS = ("subject", "text", "html")
RECIPIENT_FIELDS = ("to", "vars")
UNSUBSCRIBE_VAR = "unsubscribe_url"  # given to text and html of marketing messages
# A subject that is more than substitutions is rendered by the sandbox for every recipient; one
# that makes 10,000 renders take longer than this is refused rather than left to hold a worker.
SUBJECT_BUDGET_SECONDS = 20.0


class TooManyRecipients(ValidationError):
    """More recipients than one request may carry (answered 413)."""


@dataclass(frozen=True)
class BatchRequest:
    """A validated batch request; recipients are still raw and screened one by one."""

    template: TemplateSource
    recipients: list[dict]
    from_name: str | None
    from_addr: str
    priority: int
    category: str
    send_at: datetime | None


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more per recipient
class Recipient:
    to_name: str | None
    to_addr: str
    variables: dict
    subject: str  # rendered at intake: short, and shown by GET /v1/emails/<id>
    variables_json: str  # the checked variables as stored with the job


@dataclass(frozen=True)
class Rejection:
    index: int
    to: str
    reason: str


class Screening:
    """A request's recipients: addresses, duplicates and suppressions judged at once (`rejected`),
    the rest judged one by one as `accepted()` yields them.

    Lazy so that the batch's COPY can stream them (copy.py): PostgreSQL stores one part of the
    batch on one core while this screens the next on the other, where screening all first left
    them one after the other. `rejected` is complete, in request order, once `accepted()` ends.
    """

    def __init__(
        self,
        request: BatchRequest,
        candidates: list[tuple[int, str | None, str, dict]],
        suppressed: set[str],
        rejected: list[Rejection],
        *,
        settings: Settings,
        monotonic: Callable[[], float],
    ) -> None:
        self._request = request
        self._candidates = candidates
        self._suppressed = suppressed
        self.rejected = rejected
        self._settings = settings
        self._monotonic = monotonic

    @property
    def most(self) -> int:
        """The most recipients accepted() can yield."""
        return len(self._candidates)

    def accepted(self) -> Iterator[Recipient]:
        """Yield each recipient that passes; record the others in `rejected`.

        Raises ValidationError when the subject's renders outlast their budget, or (at the end)
        TemplateBudgetError when the body is a template bomb: both refuse the whole request.
        """
        request = self._request
        compiled = compile_template(request.template, self._settings.max_body_bytes)
        given = frozenset({UNSUBSCRIBE_VAR}) if request.category == "marketing" else frozenset()
        needed = TemplateVariables(request.template, given)
        subjects = SubjectRenderer(compiled)
        deadline = self._monotonic() + SUBJECT_BUDGET_SECONDS
        first: dict | None = None
        for index, to_name, to_addr, variables in self._candidates:
            if to_addr.lower() in self._suppressed:
                self.rejected.append(Rejection(index, _shown(request, index), "suppressed"))
                continue
            try:
                needed.check(variables)
                encoded = encode_variables(variables)
                subject = check_header_text(
                    subjects.render(variables), "rendered subject", MAX_SUBJECT
                )
            except (TemplateError, ValidationError, VariablesError) as exc:
                self.rejected.append(Rejection(index, _shown(request, index), str(exc)))
                continue
            if first is None:
                first = variables
            yield Recipient(to_name, to_addr, variables, subject, encoded)
            if not subjects.is_simple and self._monotonic() > deadline:
                raise ValidationError(
                    "template.subject",
                    f"rendering takes too long (over {SUBJECT_BUDGET_SECONDS:.0f} s for the batch)",
                )
        self.rejected.sort(key=lambda r: r.index)
        if first is not None:
            _trial_render(compiled, first, request.category, self._settings)


def parse_batch_request(
    payload: object, *, default_from: str | None, max_body_bytes: int, max_recipients: int
) -> BatchRequest:
    """Return the validated request, or raise ValidationError (TooManyRecipients over the cap)."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    _known_fields(payload, BATCH_FIELDS, "")
    template = _template(payload.get("template"), max_body_bytes)
    recipients = _recipients(payload.get("recipients"), max_recipients)
    # The single-send rules for sender, priority, category and send_at, checked on a stand-in.
    common = parse_email_request(
        {
            "to": "recipient@example.com",
            "subject": "",
            "text": "-",
            **{k: payload[k] for k in ("from", "priority", "category", "send_at") if k in payload},
        },
        default_from=default_from,
        max_body_bytes=max_body_bytes,
    )
    if common.category != "marketing" and _uses_unsubscribe(template):
        raise ValidationError(
            "template", f"{UNSUBSCRIBE_VAR} is only given to marketing messages (category)"
        )
    return BatchRequest(
        template=template,
        recipients=recipients,
        from_name=common.from_name,
        from_addr=common.from_addr,
        priority=common.priority,
        category=common.category,
        send_at=common.send_at,
    )


def _known_fields(value: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in value:
        if key not in allowed:
            raise ValidationError(
                f"{where}{str(key)[:40]}", f"is not a known field (expected {', '.join(allowed)})"
            )


def _template(value: object, max_body_bytes: int) -> TemplateSource:
    if not isinstance(value, dict):
        raise ValidationError("template", 'must be an object like {"subject": …, "text": …}')
    _known_fields(value, TEMPLATE_FIELDS, "template.")
    refuse_nulls(value, ("text", "html"), "template.")
    if value.get("subject") is None:
        raise ValidationError("template.subject", "is required")
    subject = check_header_text(value["subject"], "template.subject", MAX_SUBJECT)
    text, html = value.get("text"), value.get("html")
    for name, part in (("text", text), ("html", html)):
        if part is not None and not isinstance(part, str):
            raise ValidationError(f"template.{name}", "must be a string")
    if not text and not html:
        raise ValidationError("template.text", "give a non-empty text or html template")
    if len((text or "").encode()) + len((html or "").encode()) > max_body_bytes:
        raise ValidationError("template", f"text and html must be at most {max_body_bytes} bytes")
    source = TemplateSource(subject, text or None, html or None)
    try:
        compile_template(source)
    except TemplateError as exc:
        raise ValidationError(f"template.{exc.part}", exc.message) from None
    return source


def _recipients(value: object, max_recipients: int) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValidationError("recipients", 'must be a non-empty list of {"to": …, "vars": {…}}')
    if len(value) > max_recipients:
        raise TooManyRecipients(
            "recipients",
            f"at most {max_recipients} recipients per request, got {len(value)}; "
            "split them into several batches",
        )
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ValidationError(f"recipients[{i}]", 'must be an object like {"to": …}')
        _known_fields(entry, RECIPIENT_FIELDS, f"recipients[{i}].")
        if not isinstance(entry.get("vars", {}), dict):
            raise ValidationError(f"recipients[{i}].vars", "must be an object")
    return value


def _uses_unsubscribe(template: TemplateSource) -> bool:
    compiled = compile_template(template)
    return any(UNSUBSCRIBE_VAR in compiled.variables(part) for part in ("text", "html"))


def screen(
    session: Session,
    request: BatchRequest,
    *,
    settings: Settings,
    monotonic: Callable[[], float] = time.monotonic,
) -> Screening:
    """Refuse bad addresses, duplicates and suppressed addresses now; the rest as they are read.

    The text and html parts are not rendered: each recipient's variables are checked against the
    names the template needs (variables.py), and bounded; the subject is rendered because the job
    stores it (subject.py, cheap for plain substitutions).
    """
    rejected: list[Rejection] = []
    candidates = _addresses(request.recipients, rejected)
    suppressed = _suppressed(session, [c[2] for c in candidates])
    return Screening(
        request, candidates, suppressed, rejected, settings=settings, monotonic=monotonic
    )


def _trial_render(
    compiled: CompiledTemplate, variables: dict, category: str, settings: Settings
) -> None:
    """Render the body parts once, under the render budget, with one recipient's variables.

    Not per recipient (the variables are checked against the template's names instead): one
    budgeted render refuses a template bomb at intake with a 400 naming its part
    (TemplateBudgetError propagates), at the cost of one render per batch. The send-time render
    stays authoritative: other recipients' variables may still fail there, as bad data.
    """
    extra = (
        {UNSUBSCRIBE_VAR: f"{settings.public_url}/unsubscribe/{'x' * 80}"}
        if category == "marketing"
        else {}
    )
    for part in ("text", "html"):
        if compiled.has(part):
            try:
                compiled.render_part(part, {**variables, **extra})
            except TemplateError:
                continue  # that recipient's own problem, judged when it is sent


def _suppressed(session: Session, addresses: list[str]) -> set[str]:
    """The lower-cased suppressed addresses among these, in one query."""
    if session.get_bind().dialect.name != "postgresql":
        return suppressions.suppressed_among(session, addresses)
    # One array parameter: an IN list of 10,000 bound values costs ~50 ms to build and send.
    wanted = list({a.lower() for a in addresses})
    rows = session.execute(
        select(suppressions.table.c.email).where(
            suppressions.table.c.email == any_(cast(wanted, ARRAY(String)))
        )
    )
    return {row[0] for row in rows}


def _addresses(
    recipients: list[dict], rejected: list[Rejection]
) -> list[tuple[int, str | None, str, dict]]:
    seen: set[str] = set()
    candidates = []
    for index, entry in enumerate(recipients):
        try:
            to_name, to_addr = parse_recipient(entry.get("to"), "to")
        except ValidationError as exc:
            shown = _shown_value(entry.get("to"))
            rejected.append(Rejection(index, shown, f"bad address: {exc.message}"))
            continue
        key = to_addr.lower()
        if key in seen:
            shown = _shown_value(entry.get("to"))
            rejected.append(Rejection(index, shown, "duplicate in this request"))
            continue
        seen.add(key)
        candidates.append((index, to_name, to_addr, entry.get("vars") or {}))
    return candidates


def _shown(request: BatchRequest, index: int) -> str:
    return _shown_value(request.recipients[index].get("to"))


def _shown_value(value: object) -> str:
    return value[:320] if isinstance(value, str) else json.dumps(value)[:320]
