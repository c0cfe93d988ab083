"""Compiled batch templates for delivery, cached per process."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from massmailer.models import Batch
from massmailer.templates import CompiledTemplate, TemplateError, TemplateSource, compile_template

batches = Batch.__table__


class BatchTemplates:
    """Compiled batch templates, per process: a batch's template never changes once stored."""

    def __init__(self, max_output_chars: int, max_batches: int = 64) -> None:
        self._max_output_chars = max_output_chars
        self._max_batches = max_batches
        self._cache: OrderedDict[int, CompiledTemplate | TemplateError] = OrderedDict()
        self._lock = threading.Lock()

    def load(
        self, session: Session, batch_ids: Iterable[int | None]
    ) -> dict[int, CompiledTemplate | TemplateError]:
        """Compile the templates of these batches that are not cached yet (one query).

        Return every requested batch's template (or its compile error), so the caller can hold
        them for as long as it needs them: the cache alone may evict them meanwhile.
        """
        wanted = {b for b in batch_ids if b is not None}
        found: dict[int, CompiledTemplate | TemplateError] = {}
        with self._lock:
            for batch_id in wanted & self._cache.keys():
                found[batch_id] = self._cache[batch_id]
                self._cache.move_to_end(batch_id)
        missing = wanted - found.keys()
        if not missing:
            return found
        rows = session.execute(
            select(
                batches.c.id,
                batches.c.subject_template,
                batches.c.text_template,
                batches.c.html_template,
            ).where(batches.c.id.in_(missing))
        )
        for batch_id, subject, text_part, html in rows:
            source = TemplateSource(subject, text_part, html)
            try:
                compiled: CompiledTemplate | TemplateError = compile_template(
                    source, self._max_output_chars
                )
            except TemplateError as exc:  # validated at intake; kept so each job fails clearly
                compiled = exc
            self._put(batch_id, compiled)
            found[batch_id] = compiled
        return found

    def get(self, batch_id: int) -> CompiledTemplate | TemplateError | None:
        """Return the cached template (or its compile error); None if not cached."""
        with self._lock:
            found = self._cache.get(batch_id)
            if found is not None:
                self._cache.move_to_end(batch_id)
        return found

    def _put(self, batch_id: int, compiled: CompiledTemplate | TemplateError) -> None:
        with self._lock:
            self._cache[batch_id] = compiled
            while len(self._cache) > self._max_batches:
                self._cache.popitem(last=False)
