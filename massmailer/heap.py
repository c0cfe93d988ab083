"""Keep what a process builds at start-up out of the garbage collector's full passes."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move every object alive now to the collector's permanent generation.

    The modules, the app and its metadata live as long as the process, yet each full collection
    walked all of them again: a 10,000-recipient POST allocates enough to trigger a few, which
    cost it about 50 ms of CPU (a third of its web time, bench/README.md). Called once the app is
    built, in the web and worker entry point.
    """
    gc.collect()
    gc.freeze()
