"""The process's sender threads: each sends one message at a time on a pooled SMTP session.

Created on first use in the process that sends (never inherited across a fork: the parent's
threads do not exist in the child).
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class SenderThreads:
    """A fork-aware thread pool of `count` sender threads, shared by the process's chunks."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run fn on a sender thread, in the caller's context (its log fields: the task id)."""
        context = contextvars.copy_context()
        return self._pool().submit(context.run, fn, *args, **kwargs)

    def shutdown(self) -> None:
        """Let the queued sends finish and stop the threads (tests and process exit)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._pid == os.getpid():
            executor.shutdown(wait=True)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pid != os.getpid():
                self._executor, self._pid = None, os.getpid()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.count, thread_name_prefix="sender")
            return self._executor
