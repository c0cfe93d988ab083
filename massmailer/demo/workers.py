"""A few worker threads that feed the table queue's chunks to the production delivery service."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Flask

from massmailer.delivery.engine import ChunkReport
from massmailer.demo.table_queue import TableQueue
from massmailer.extensions import db
from massmailer.services import Services, deliver_chunk

logger = logging.getLogger(__name__)

# A chunk of the demo's size takes well under a second; the budget only matters if a provider hangs.
CHUNK_BUDGET_SECONDS = 60.0
IDLE_POLL_SECONDS = 0.1


class WorkerThreads:
    """Run `count` threads, each taking chunks from the queue until stop()."""

    def __init__(
        self,
        app: Flask,
        services: Services,
        queue: TableQueue,
        count: int,
        on_report: Callable[[ChunkReport], None],
    ) -> None:
        self._app = app
        self._services = services
        self._queue = queue
        self._on_report = on_report
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"demo-worker-{n}", daemon=True)
            for n in range(count)
        ]
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Let each thread finish its chunk, then join them."""
        self._stopping.set()
        self._queue.wake()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        with self._app.app_context():
            try:
                while not self._stopping.is_set():
                    if not self._one_chunk():
                        self._queue.wait(IDLE_POLL_SECONDS)
            except BaseException as exc:
                # Fail loudly: the runner stops the demo and shows this instead of hanging.
                logger.exception("event=demo_worker_crashed")
                self.errors.append(exc)
            finally:
                db.session.remove()

    def _one_chunk(self) -> bool:
        job_ids = self._queue.take(db.session)
        if not job_ids:
            return False
        try:
            report = deliver_chunk(db.session, self._services, job_ids, CHUNK_BUDGET_SECONDS)
        finally:
            self._queue.done(job_ids)
        self._on_report(report)
        return True
