"""Keep the garbage collector's full passes off what needs none of them."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_pause_lock = threading.Lock()
_pauses = 0
_was_enabled = False


def freeze_startup_objects() -> None:
    """Move every object alive now to the collector's permanent generation.

    The modules, the app and its metadata live as long as the process, yet each full collection
    walked all of them again: a 10,000-recipient POST allocates enough to trigger a few, which
    cost it about 50 ms of CPU (a third of its web time, bench/README.md). Called once the app is
    built, in the web and worker entry point.
    """
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off (in every thread), and on again after it.

    A batch request parses and screens tens of thousands of dicts and lists that form no cycle:
    reference counting frees them all, yet the collector, triggered by the allocations, walked
    them again and again as they grew (bench/README.md). What the block leaves in cycles is
    collected by the first pass after it. Nested and concurrent blocks turn it on after the last.
    """
    global _pauses, _was_enabled
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
