"""The process's sender threads: each sends a run of messages on a pooled SMTP session.

Created on first use in the process that sends (never inherited across a fork: the parent's
threads do not exist in the child). How many run at once follows ThreadLimit: up to `count`
against distant providers, fewer when the threads only queue for the GIL. A thread above the
limit ends once its run is done; one is started when work waits and the limit allows.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from massmailer.delivery.thread_limit import ThreadLimit

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger(__name__)

_Work = tuple[Future, contextvars.Context, Callable[..., Any], tuple, dict]


class SenderThreads:
    """A fork-aware pool of at most `count` sender threads, shared by the process's chunks."""

    def __init__(self, count: int, floor: int) -> None:
        self.count = count
        self._floor = floor
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._reset()

    def _reset(self) -> None:
        self.pace = ThreadLimit(self.count, self._floor)
        self._work: deque[_Work] = deque()
        self._threads = 0
        self._idle = 0
        self._stopping = False

    @property
    def limit(self) -> int:
        """How many threads may run now."""
        return self.pace.limit

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run fn on a sender thread, in the caller's context (its log fields: the task id)."""
        future: Future[R] = Future()
        self._forked_check()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the sender threads are shut down")
            self._work.append((future, contextvars.copy_context(), fn, args, kwargs))
            self._cond.notify()
            self._start_as_needed()
        return future

    def note_stream(self, provider: str, messages: int, seconds: float) -> None:
        """Report a stream's pace (see ThreadLimit); start threads if the limit grew."""
        changed = self.pace.note_stream(provider, messages, seconds)
        if changed is not None:
            logger.debug("event=sender_thread_limit limit=%d", changed)
            with self._cond:
                self._start_as_needed()

    def shutdown(self) -> None:
        """Let the queued sends finish and stop the threads (tests and process exit)."""
        with self._cond:
            if self._pid != os.getpid():
                return
            self._stopping = True
            self._cond.notify_all()
            while self._threads:
                self._cond.wait()
            self._stopping = False

    def _forked_check(self) -> None:
        # Outside the condition: a forked child has one thread, and a new condition to take.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._cond = threading.Condition()
            self._reset()

    def _start_as_needed(self) -> None:
        # Each idle thread (woken or not yet) takes one queued run; start threads for the rest.
        while len(self._work) > self._idle and self._threads < self.pace.limit:
            self._threads += 1
            threading.Thread(target=self._serve, name="sender", daemon=True).start()

    def _serve(self) -> None:
        while (work := self._next_work()) is not None:
            _run(work)

    def _next_work(self) -> _Work | None:
        """The next run to send, or None when this thread should end."""
        with self._cond:
            while True:
                if self._threads > self.pace.limit or (self._stopping and not self._work):
                    self._threads -= 1
                    self._cond.notify_all()  # shutdown() waits for the count to reach 0
                    return None
                if self._work:
                    return self._work.popleft()
                self._idle += 1
                self._cond.wait()
                self._idle -= 1


def _run(work: _Work) -> None:
    # A function of its own: the run's objects are let go when it returns, not kept alive by
    # the thread until its next run.
    future, context, fn, args, kwargs = work
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = context.run(fn, *args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
