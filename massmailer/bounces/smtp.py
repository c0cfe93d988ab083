"""The `bounces` process: an SMTP server for the bounce domain's reports (aiosmtpd).

It is not a relay: RCPT is accepted only for our VERP addresses, the bare bounce address, the
feedback-loop address and the List-Unsubscribe mailto address; anything else gets 550. Messages
are bounded in size (552 beyond MASSMAILER_BOUNCE_MAX_BYTES, aiosmtpd's data_size_limit) and in
rate (a token bucket answers 450 at MAIL FROM, so senders retry later). The database work runs
in a small thread pool, off the event loop; a database error answers 451 so the sender retries.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from massmailer.bounces.inbox import Inbox, Received

logger = logging.getLogger(__name__)

MAX_RECIPIENTS = 5  # a report has one; a few allow an MTA that batches
Store = Callable[[bytes, str], Received]


class TokenBucket:
    """Allow `rate` events a second on average and `burst` at once (thread-safe)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class BounceHandler:
    """aiosmtpd hooks: check recipients and rate, hand the message to the inbox."""

    def __init__(self, inbox: Inbox, store: Store, bucket: TokenBucket) -> None:
        self._inbox, self._store, self._bucket = inbox, store, bucket
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bounces-db")

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if not self._bucket.take():
            return "450 4.7.1 Too many reports at once, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self._inbox.accepts(address) is None:
            return "550 5.1.1 No such mailbox here (this server is not a relay)"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        try:
            received = await loop.run_in_executor(
                self._pool, self._store, raw, envelope.rcpt_tos[0]
            )
        except Exception:
            logger.exception("event=inbound_store_failed peer=%s", session.peer)
            return "451 4.3.0 Could not store the report, try again later"
        return f"250 2.0.0 OK {received.state}"

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def make_controller(handler: BounceHandler, host: str, port: int, max_bytes: int) -> Controller:
    """An aiosmtpd controller (its own thread and event loop) for the handler."""
    return Controller(
        handler,
        hostname=host,
        port=port,
        data_size_limit=max_bytes,
        ident="MassMailer bounces",
    )


def serve_forever(controller: Controller, handler: BounceHandler) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting and finish the reports in hand."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.start()
    logger.info("event=bounces_listening host=%s port=%d", controller.hostname, controller.port)
    stop.wait()
    controller.stop()
    handler.close()
    logger.info("event=bounces_stopped")
