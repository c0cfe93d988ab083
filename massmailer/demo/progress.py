"""A progress bar on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import shutil
import threading
import time
from typing import TextIO

from massmailer.delivery.engine import ChunkReport

BAR_WIDTH = 20
TTY_INTERVAL_SECONDS = 0.2
LINE_INTERVAL_SECONDS = 2.0


class Tally:
    """Running counts, updated by the client and the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = self.sent = self.failed = self.retries = 0

    def accepted_some(self, count: int) -> None:
        with self._lock:
            self.accepted += count

    def add_report(self, report: ChunkReport) -> None:
        with self._lock:
            self.sent += report.sent
            self.failed += report.failed
            self.retries += len(report.retries)

    def snapshot(self) -> tuple[int, int, int, int]:
        """Return (accepted, sent, failed, retries) read together."""
        with self._lock:
            return self.accepted, self.sent, self.failed, self.retries

    def finished(self, expected: int) -> bool:
        """Tell whether every expected job has ended SENT or FAILED."""
        with self._lock:
            return self.accepted == expected and self.sent + self.failed == expected


class ProgressBar:
    """Draw the tally against a total from a background thread until stop()."""

    def __init__(self, total: int, tally: Tally, stream: TextIO) -> None:
        self._total = total
        self._tally = tally
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = TTY_INTERVAL_SECONDS if self._tty else LINE_INTERVAL_SECONDS
        self._drawn = 0  # length of the line on screen
        self._started = time.monotonic()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Draw the final state and end the line."""
        self._stopping.set()
        self._thread.join()
        self._draw(final=True)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        line = render(self._total, *self._tally.snapshot(), time.monotonic() - self._started)
        if self._tty:
            # Stay on one terminal line (a wrapped line cannot be redrawn with \r) and blank
            # out what a longer previous line left behind.
            line = line[: shutil.get_terminal_size().columns - 1]
            padded = line.ljust(self._drawn)
            self._drawn = len(line)
            self._stream.write("\r" + padded + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def render(total: int, accepted: int, sent: int, failed: int, retries: int, elapsed: float) -> str:
    """Return one progress line: a bar of the finished share and the counts behind it."""
    done = sent + failed
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    rate = sent / elapsed if elapsed > 0 else 0.0
    return (
        f"[{bar}] {done}/{total}  sent {sent}  failed {failed}  retries {retries}  "
        f"queued {accepted - done}  {rate:.0f}/s  {elapsed:.0f}s"
    )
