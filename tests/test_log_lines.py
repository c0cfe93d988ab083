"""LineHandler: every line lands whole, from many threads at once, on a pipe and on a file."""

from __future__ import annotations

import io
import logging
import os
import select
import threading
from pathlib import Path

import pytest

from massmailer import logs

THREADS, LINES = 16, 300


def log_from_threads(handler: logging.Handler, message: str) -> None:
    logger = logging.getLogger(f"tests.log_lines.{id(handler)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    start = threading.Barrier(THREADS)

    def write(thread: int) -> None:
        start.wait()
        for n in range(LINES):
            logger.info("thread=%d n=%d %s", thread, n, message)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        logger.removeHandler(handler)


def assert_whole_lines(text: str, message: str) -> None:
    lines = text.splitlines()
    assert len(lines) == THREADS * LINES
    expected = {f"thread={t} n={n} {message}" for t in range(THREADS) for n in range(LINES)}
    assert set(lines) == expected


@pytest.mark.parametrize("length", [40, select.PIPE_BUF * 3])
def test_lines_from_many_threads_never_interleave_on_a_pipe(length: int) -> None:
    message = "x" * length  # the longer one goes out under the lock, in several writes
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b""))
    )
    reader.start()
    with os.fdopen(write_end, "w") as stream:
        handler = logs.LineHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log_from_threads(handler, message)
    reader.join()
    os.close(read_end)
    assert_whole_lines(b"".join(chunks).decode(), message)


def test_lines_from_many_threads_never_interleave_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    with path.open("w") as stream:
        handler = logs.LineHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log_from_threads(handler, "é ünïcode ✓")
    assert_whole_lines(path.read_text(encoding="utf-8"), "é ünïcode ✓")


def test_a_stream_without_a_descriptor_is_written_as_streamhandler_does() -> None:
    stream = io.StringIO()
    handler = logs.LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log_from_threads(handler, "to a StringIO")
    assert_whole_lines(stream.getvalue(), "to a StringIO")


def test_the_filters_still_apply() -> None:
    stream = io.StringIO()
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as pipe:
        handler = logs.LineHandler(pipe)
        handler.addFilter(logs.ContextFilter())
        handler.addFilter(lambda record: "drop" not in record.getMessage())
        handler.setFormatter(logs.RedactingFormatter("%(message)s%(context)s"))
        logger = logging.getLogger("tests.log_lines.filters")
        logger.addHandler(handler)
        logger.propagate = False
        logs.bind_task("task-9")
        try:
            logger.warning("keep url=https://user:secret@example.com/x")
            logger.warning("drop this")
        finally:
            logs.unbind_task()
            logger.removeHandler(handler)
    with os.fdopen(read_end) as out:
        stream.write(out.read())
    assert stream.getvalue() == "keep url=https://user:***@example.com/x task_id=task-9\n"
