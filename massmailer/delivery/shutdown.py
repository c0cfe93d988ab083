"""A graceful stop: on SIGTERM a worker process starts no new send and finishes the ones in flight.

Platforms give a process a short grace after SIGTERM (Heroku 30 s, Docker 10 s) before SIGKILL.
Celery's prefork children would die at once on SIGTERM (Celery resets it to the default there),
killing sends between a provider's 250 and its recorded outcome: the one window for a duplicate.
With this handler the chunk releases its unstarted jobs, lets each send in flight end within its
deadline, writes every outcome and returns; the parent's warm shutdown then stops the child.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)

STOPPING = threading.Event()


_installed_in: list[int] = []  # the pid whose SIGTERM handler is ours, once installed


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    STOPPING.set()


def mark_pool_child() -> None:
    """Note that this process is a pool child (Celery's worker_process_init): a fresh start."""
    STOPPING.clear()
    _installed_in.clear()


def install_in_pool_child(is_pool_child: bool) -> None:
    """Make SIGTERM in this pool child mean "finish what is in flight, start nothing new".

    Called as each task starts: billiard installs its own exiting handler after the
    child's initialisers run, so worker_process_init is too early to install ours. Never in
    the main worker process, whose SIGTERM handler is Celery's warm shutdown.
    """
    if not is_pool_child or _installed_in == [os.getpid()]:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed_in[:] = [os.getpid()]


def forward_to_children(child_pids: list[int]) -> None:
    """Tell the pool's children to stop starting sends (the parent alone got the SIGTERM)."""
    for pid in child_pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        logger.info("event=stop_forwarded child_pid=%d", pid)
