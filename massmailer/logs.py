"""Structured key=value log lines on stderr, each stamped with the running task's id.

Celery's task_prerun/task_postrun signals (connected in massmailer.worker) set and clear the task
id in a context variable; a handler filter copies it onto every record, so every line a task logs
(delivery's event=sent lines included) carries task_id without each call site passing it.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import time
from contextvars import ContextVar
from typing import TextIO

FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s%(context)s"

_task_id: ContextVar[str | None] = ContextVar("massmailer_task_id", default=None)

# scheme://user:password@host -> scheme://user:***@host: a URL with credentials never reaches a log.
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def bind_task(task_id: str | None, **_: object) -> None:
    """Stamp the lines logged from now on in this context with task_id (task_prerun)."""
    _task_id.set(task_id)


def unbind_task(**_: object) -> None:
    """Stop stamping lines with a task id (task_postrun)."""
    _task_id.set(None)


def current_task_id() -> str | None:
    """The id of the task this context is running, if any."""
    return _task_id.get()


class ContextFilter(logging.Filter):
    """Add `context` (" task_id=…" inside a task, else "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = _task_id.get()
        record.context = f" task_id={task_id}" if task_id else ""
        return True


class RedactingFormatter(logging.Formatter):
    """Format key=value lines with any URL credentials masked."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            record.context = ""
        return redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        # A worker logs a line per message, thousands a second: localtime and strftime once a
        # second, not once a line.
        second, stamp = self._second
        if int(record.created) != second:
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, stamp)
        return self.default_msec_format % (stamp, record.msecs)


def redact(text: str) -> str:
    """Mask the password of every scheme://user:password@host in text."""
    if "://" not in text:
        return text  # the usual line: no URL, nothing to scan for
    return _URL_CREDENTIALS.sub(r"\1:***@", text)


class LineHandler(logging.StreamHandler):
    """A StreamHandler that writes each line with one system call and, usually, no lock.

    A worker logs a line per message from dozens of sender threads. StreamHandler takes its lock
    twice a line (to write, then to flush), and under load threads queue for it. A write() of at
    most PIPE_BUF bytes lands whole on a pipe, and a regular file's writes never interleave on
    Linux, so a line that short goes out at once; a longer one (a traceback) takes the lock.
    A stream without a file descriptor (a test's StringIO) is written as StreamHandler does.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"

    def handle(self, record: logging.LogRecord) -> bool:
        if self._fd is None:
            return bool(super().handle(record))
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self._fd is None:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
            data = line.encode(self._encoding, "backslashreplace")
            if len(data) <= select.PIPE_BUF:
                written = os.write(self._fd, data)
                if written == len(data):
                    return
                data = data[written:]
            with self.lock:  # type: ignore[union-attr]
                while data:
                    data = data[os.write(self._fd, data) :]
        except Exception:
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Send key=value lines to stderr unless logging is already configured."""
    root = logging.getLogger()
    if root.handlers:
        return
    # FORMAT names none of the caller's file, line, thread or process: the logging HOWTO's
    # "Optimization" switches skip collecting them, about a fifth of a line's cost.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = LineHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(RedactingFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
