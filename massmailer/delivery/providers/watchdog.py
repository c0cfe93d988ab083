"""Enforce wall-clock deadlines on blocking socket I/O by shutting the socket down.

smtplib's timeout bounds each socket call, not a whole reply: a server that sends one byte every
few seconds keeps `getreply()` reading for as long as it likes. One daemon thread per process
watches the sockets of sessions that are waiting on a server and shuts down any that passes its
deadline; the blocked read then ends with an error at once. A shut-down socket is never reused:
the session that owned it is broken.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time

logger = logging.getLogger(__name__)


class Watchdog:
    """Shut down watched sockets that pass their deadline (a `time.monotonic()` reading)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        # owner id -> (deadline, seq, socket); the heap holds (deadline, seq, owner id) and may
        # hold stale entries (a newer seq for the same owner, or none), skipped when popped.
        self._watched: dict[int, tuple[float, int, object]] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self.fired = 0  # sockets shut down so far, for tests and logs

    def watch(self, owner: object, target: object, deadline: float) -> None:
        """Shut `target` down at `deadline` unless `unwatch(owner)` or another `watch` comes first.

        `target` is a socket, or an object whose `sock` attribute is one when the deadline comes
        (an `smtplib.SMTP` still connecting has none yet).
        """
        key = id(owner)
        with self._lock:
            current = self._watched.get(key)
            if current is not None and current[0] == deadline and current[2] is target:
                return  # already armed for this deadline: the common case, kept cheap
            seq = next(self._seq)
            self._watched[key] = (deadline, seq, target)
            wake = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, seq, key))
            self._ensure_thread()
            if wake:
                self._lock.notify()

    def unwatch(self, owner: object) -> None:
        """Stop watching the owner's socket (its heap entry goes stale)."""
        with self._lock:
            self._watched.pop(id(owner), None)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="smtp-deadline-watchdog", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while True:
                self._fire_expired(time.monotonic())
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                self._lock.wait(timeout=None if wait is None else max(wait, 0.001))

    def _fire_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, seq, key = heapq.heappop(self._heap)
            current = self._watched.get(key)
            if current is None or current[1] != seq:
                continue  # unwatched or re-armed since
            del self._watched[key]
            self.fired += 1
            _shut_down(current[2])


def _shut_down(target: object) -> None:
    sock = target if isinstance(target, socket.socket) else getattr(target, "sock", None)
    if not isinstance(sock, socket.socket):
        return  # not connected yet: its own connect timeout bounds it
    # socket.socket.shutdown, not SSLSocket's override: that one also drops the SSL object under
    # the reading thread's feet. The bare syscall just makes the blocked read return.
    # Already closed or reset (OSError): nothing is blocked on it any more.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_instance: tuple[int, Watchdog] | None = None
_instance_lock = threading.Lock()


def _forget_after_fork() -> None:
    # The parent's watchdog thread does not exist in the child, and its locks may be held.
    global _instance, _instance_lock
    _instance, _instance_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def watchdog() -> Watchdog:
    """Return this process's watchdog (a forked child gets its own: threads do not survive fork)."""
    global _instance
    pid = os.getpid()
    current = _instance
    if current is not None and current[0] == pid:
        return current[1]
    with _instance_lock:
        if _instance is None or _instance[0] != pid:
            _instance = (pid, Watchdog())
        return _instance[1]
