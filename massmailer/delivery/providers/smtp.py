"""One SMTP session to one provider over smtplib, every failure raised as a classified SendError."""

from __future__ import annotations

import base64
import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from massmailer.delivery.providers.base import (
    Delivered,
    Envelope,
    FailureKind,
    ProviderConfig,
    SendError,
    TlsMode,
)
from massmailer.delivery.providers.smtp_wire import (
    data_block,
    envelope_commands,
    parse_queue_id,
    reply_text,
)
from massmailer.delivery.providers.watchdog import watchdog
from massmailer.delivery.retry import Stage, classify, parse_enhanced
from massmailer.delivery.throttle import ThrottleRules, default_rules

logger = logging.getLogger(__name__)

__all__ = ["Envelope", "SmtpSession", "make_tls_context", "parse_queue_id"]

_OPENING_STAGES = frozenset({"connect", "helo", "auth"})
# QUIT is a courtesy: a stalled server must not hold a worker's shutdown for the full timeout.
_QUIT_TIMEOUT_SECONDS = 2.0
# What a successful reply to MAIL, RCPT and DATA is.
_EXPECTED: tuple[tuple[Stage, frozenset[int]], ...] = (
    ("mail", frozenset({250})),
    ("rcpt", frozenset({250, 251})),
    ("data", frozenset({354})),
)

Outcome = Delivered | SendError


class _Deadlines(NamedTuple):
    """One send_many call's bounds: all of it (monotonic time, or None), and each transaction."""

    call: float | None
    each_within: float


class _LinkLost(Exception):
    """The connection failed, or passed its deadline, while we wrote or waited for a reply."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SmtpSession:
    """One connection to one provider: open, send single-recipient messages, close.

    Not thread-safe: one thread uses a session at a time (the pool hands it out).
    `opened_at` and `last_used` are `time.monotonic()` readings.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        pipelining: bool = True,
        throttle_rules: ThrottleRules | None = None,
    ) -> None:
        self.config = config
        # Which 4xx replies say "slow down" (THROTTLED rather than TRANSIENT).
        self._throttle_rules = throttle_rules or default_rules()
        self.opened_at: float | None = None
        self.last_used: float | None = None
        self.sent_count = 0
        self._ssl_context = ssl_context
        self._local_hostname = local_hostname
        self._clock = clock
        self._smtp: smtplib.SMTP | None = None
        self._broken = False
        self._in_transaction = False
        self._stream: object | None = None  # the send_many iterator that owns the session
        self._stage: Stage = "connect"
        # Pipeline when the server advertises it; False keeps one command per round trip.
        self._pipelining = pipelining
        self._watchdog = watchdog()

    def __repr__(self) -> str:
        state = "broken" if self._broken else "open" if self._smtp else "new"
        return f"SmtpSession(provider={self.config.name!r}, {state}, sent={self.sent_count})"

    @property
    def broken(self) -> bool:
        """True once the connection failed or was closed; the pool must discard it."""
        return self._broken

    @property
    def usable(self) -> bool:
        """True while the session is open and not broken."""
        return self._smtp is not None and not self._broken

    def open(self) -> None:
        """Connect, greet, secure and authenticate as the provider's config says."""
        if self._smtp is not None or self._broken:
            raise RuntimeError("an SmtpSession opens once; make a new one")
        tls = TlsMode(self.config.tls)
        deadline = time.monotonic() + self.config.transaction_seconds
        with self._failures_as_send_errors(), self._watched(deadline):
            self._stage = "connect"
            context = self._tls_context() if tls is not TlsMode.NONE else None
            self._smtp = self._connect(tls, context, deadline)
            self._stage = "helo"
            self._smtp.ehlo_or_helo_if_needed()
            if tls is TlsMode.STARTTLS:
                self._smtp.starttls(context=context)
                self._smtp.ehlo_or_helo_if_needed()  # RFC 3207: forget what was said before TLS
            if self.config.username:
                self._stage = "auth"
                self._smtp.login(self.config.username, self.config.password or "")
        self.opened_at = self.last_used = self._clock()
        logger.debug("smtp session opened provider=%s", self.config.name)

    def send(
        self, mail_from: str, rcpt: str, message: bytes, *, deadline: float | None = None
    ) -> Delivered:
        """Send one message to one recipient and return the provider's receipt.

        MAIL, RCPT and DATA go out in one write when the server advertises PIPELINING, one by
        one otherwise. The transaction must end by `deadline` (a `time.monotonic()` reading),
        which can only shorten the default of `config.transaction_seconds` from now. Raises a
        classified SendError: UNKNOWN_OUTCOME when the final dot went out but no reply came back
        (timeout, hang-up, deadline), since the provider may have accepted the message.
        """
        outcomes = self.send_many([Envelope(mail_from, rcpt, message)], deadline=deadline)
        try:
            for _, outcome in outcomes:
                if isinstance(outcome, SendError):
                    raise outcome
                return outcome
        finally:
            outcomes.close()  # now, not when a traceback holding it is freed
        raise self._error(FailureKind.NOT_SENT, "deadline passed before the send started")

    def send_many(
        self,
        envelopes: Iterable[Envelope],
        *,
        deadline: float | None = None,
        each_within: float | None = None,
    ) -> Iterator[tuple[Envelope, Outcome]]:
        """Send each envelope in turn; yield (envelope, Delivered or SendError) as each settles.

        On a server that advertises PIPELINING the next envelope's MAIL, RCPT and DATA go out in
        the same write as the previous message's final dot (RFC 2920 3.1), so a steady stream
        costs one round trip per message. An envelope is taken from `envelopes` only when its
        commands are about to be written, so a caller may feed a queue and stop feeding; it
        must not block long, as a transaction is open meanwhile. Every envelope taken is
        yielded exactly once, unless the caller abandons the iterator (then the session is
        broken and the envelopes taken but not yielded were not necessarily sent: treat them as
        unknown). Each transaction must end within `config.transaction_seconds` of being taken;
        `each_within` (seconds) can only shorten that, and `deadline` bounds them all: no
        envelope is taken after it. The iterator ends early when the session breaks. If the
        connection drops after a chained final dot, that message is UNKNOWN_OUTCOME and the
        next one, whose data was never sent, NOT_SENT.
        """
        if not self.usable:
            raise RuntimeError(f"send on a session that is not open: {self!r}")
        assert self._smtp is not None
        if self._in_transaction:
            # An earlier stream was left with commands in flight: their replies are still to
            # come, so an RSET's reply could not be told from theirs. Never mix two messages.
            self._stage = "mail"
            self._break()
            raise self._error(FailureKind.TRANSIENT, "an earlier transaction was left in flight")
        pipelined = self._pipelining and self._smtp.has_extn("pipelining")
        self._stream = stream = object()
        limit = self.config.transaction_seconds
        if each_within is not None:
            limit = min(limit, each_within)
        return self._outcomes(stream, iter(envelopes), _Deadlines(deadline, limit), pipelined)

    @property
    def pipelining(self) -> bool:
        """True when sends on this open session are pipelined (allowed and advertised)."""
        return self.usable and self._pipelining and bool(self._smtp.has_extn("pipelining"))

    def _outcomes(
        self,
        stream: object,
        source: Iterator[Envelope],
        deadlines: _Deadlines,
        pipelined: bool,
    ) -> Iterator[tuple[Envelope, Outcome]]:
        try:
            if pipelined:
                yield from self._send_pipelined(source, deadlines)
            else:
                yield from self._send_one_by_one(source, deadlines)
        except BaseException:
            # Abandoned or interrupted (a signal, a time limit) with our bytes on the wire: the
            # stream may hold half a message, so an RSET could be read as data. Never reuse it.
            # (An iterator abandoned earlier and finalized later must not touch a newer one's.)
            if self._in_transaction and self._stream is stream:
                self._break()
            raise
        finally:
            if self._stream is stream:
                self._idle()

    def _send_one_by_one(
        self, source: Iterator[Envelope], deadlines: _Deadlines
    ) -> Iterator[tuple[Envelope, Outcome]]:
        while self.usable:
            taken = self._take(source, deadlines)
            if taken is None:
                return
            envelope, deadline = taken
            outcome = self._transact(envelope, deadline)
            self._idle()
            yield envelope, outcome

    def _transact(self, envelope: Envelope, deadline: float) -> Outcome:
        """One transaction, a command and its reply at a time: today's path, deadline-bounded."""
        lines = self._commands(envelope)
        if isinstance(lines, SendError):
            return lines
        self._in_transaction = True
        dot_sent = False
        try:
            for line, (stage, expected) in zip(lines, _EXPECTED, strict=True):
                self._stage = stage
                self._write(line, deadline)
                code, reply = self._read(deadline)
                if code not in expected:
                    return self._refusal(code, reply, stage)
            self._write(data_block(envelope.message), deadline)
            dot_sent = True
            code, reply = self._read(deadline)
        except _LinkLost as lost:
            # Past the final dot the provider may have taken the message: say so (finding 9).
            kind = FailureKind.UNKNOWN_OUTCOME if dot_sent else FailureKind.TRANSIENT
            return self._link_error(kind, lost.detail, envelope.key)
        if code != 250:
            return self._refusal(code, reply, "data")
        self._in_transaction = False
        return self._delivered(code, reply)

    def _send_pipelined(
        self, source: Iterator[Envelope], deadlines: _Deadlines
    ) -> Iterator[tuple[Envelope, Outcome]]:
        """Pipelined transactions, each envelope's commands chained behind the previous dot."""
        waiting: tuple[Envelope, float] | None = None  # had its 354: its data goes out next
        while True:
            refused: list[tuple[Envelope, Outcome]] = []
            taken = self._take_valid(source, deadlines, refused)
            if waiting is None and taken is None:
                self._idle()
                yield from refused
                return
            wire = data_block(waiting[0].message) if waiting else b""
            wire += b"".join(taken[2]) if taken else b""
            due = [item[1] for item in (waiting, taken) if item is not None]
            self._in_transaction = True
            try:
                self._write(wire, min(due))
            except _LinkLost as lost:
                # A failed write leaves unknown how much went out: the dot may have.
                yield from self._lost_in_flight(waiting, taken, lost)
                yield from refused
                return
            yield from refused
            if waiting is not None:
                envelope, deadline = waiting
                try:
                    code, reply = self._read(deadline)
                except _LinkLost as lost:
                    yield from self._lost_in_flight(waiting, taken, lost)
                    return
                outcome = self._end_of_data(code, reply)
                if taken is None:
                    self._in_transaction = False
                    self._idle()
                elif self._smtp is not None:
                    self._watchdog.watch(self, self._smtp, taken[1])  # its turn now
                yield envelope, outcome
            if taken is None:
                return
            envelope, deadline, _ = taken
            outcome = self._pipelined_replies(envelope, deadline, chained=waiting is not None)
            if outcome is None:
                waiting = (envelope, deadline)
                continue
            waiting = None
            self._idle()
            yield envelope, outcome
            if not self.usable:
                return

    def _pipelined_replies(
        self, envelope: Envelope, deadline: float, *, chained: bool
    ) -> SendError | None:
        """Read the replies to MAIL, RCPT and DATA; None when the server waits for the data."""
        replies: list[tuple[Stage, int, bytes]] = []
        try:
            for stage, _ in _EXPECTED:
                self._stage = stage
                code, reply = self._read(deadline)
                replies.append((stage, code, reply))
        except _LinkLost as lost:
            failed = _first_refusal(replies)
            if failed is not None:  # a 421 and a hang-up: the reply says why
                self._break()
                return self._refusal(failed[1], failed[2], failed[0])
            kind = FailureKind.NOT_SENT if chained else FailureKind.TRANSIENT
            return self._link_error(kind, lost.detail)
        failed = _first_refusal(replies)
        if failed is None:
            return None
        if replies[2][1] == 354:
            # Ready for data though the transaction failed (a refused RCPT): end it with a lone
            # dot, whose reply is read and never taken for a delivery, then RSET below.
            try:
                self._write(b".\r\n", deadline)
                self._read(deadline)
            except _LinkLost:
                self._break()
        # After a refused MAIL the later replies are 503s: the first failing one says why.
        return self._refusal(failed[1], failed[2], failed[0])

    def _end_of_data(self, code: int, reply: bytes) -> Outcome:
        if code == 250:
            return self._delivered(code, reply)
        # The transaction ended with this reply: nothing to reset, and the next envelope's
        # commands are already on the wire behind it, so an RSET now would land among them.
        return self._refusal(code, reply, "data", reset=False)

    def _lost_in_flight(
        self,
        waiting: tuple[Envelope, float] | None,
        taken: tuple[Envelope, float, tuple[bytes, ...]] | None,
        lost: _LinkLost,
    ) -> Iterator[tuple[Envelope, Outcome]]:
        """The connection failed with a final dot and/or the next envelope's commands sent."""
        if waiting is not None:
            self._stage = "data"
            unknown = self._link_error(FailureKind.UNKNOWN_OUTCOME, lost.detail, waiting[0].key)
            yield waiting[0], unknown
        if taken is not None:
            self._stage = "mail"
            kind = FailureKind.NOT_SENT if waiting is not None else FailureKind.TRANSIENT
            yield taken[0], self._link_error(kind, lost.detail)

    def _idle(self) -> None:
        """Nothing of ours is in flight: however long the caller looks, the session is fine."""
        self._watchdog.unwatch(self)
        self.last_used = self._clock()

    def _take(
        self, source: Iterator[Envelope], deadlines: _Deadlines
    ) -> tuple[Envelope, float] | None:
        """Take the next envelope and give it its deadline; None when done or out of time."""
        now = time.monotonic()
        call_deadline = deadlines.call
        if call_deadline is not None and now >= call_deadline:
            return None
        envelope = next(source, None)
        if envelope is None:
            return None
        deadline = now + deadlines.each_within
        return envelope, deadline if call_deadline is None else min(deadline, call_deadline)

    def _take_valid(
        self,
        source: Iterator[Envelope],
        deadlines: _Deadlines,
        refused: list[tuple[Envelope, Outcome]],
    ) -> tuple[Envelope, float, tuple[bytes, ...]] | None:
        """Take the next envelope that can be sent; add the unsendable ones to `refused`."""
        while (taken := self._take(source, deadlines)) is not None:
            lines = self._commands(taken[0])
            if not isinstance(lines, SendError):
                return taken[0], taken[1], lines
            refused.append((taken[0], lines))
        return None

    def _commands(self, envelope: Envelope) -> tuple[bytes, ...] | SendError:
        try:
            return envelope_commands(envelope)
        except ValueError as exc:
            # A malformed or non-ASCII address: refused before a byte of it is sent.
            self._stage = "rcpt"
            return self._error(FailureKind.BAD_DATA, f"{type(exc).__name__}: {exc}")

    def _write(self, data: bytes, deadline: float) -> None:
        smtp = self._armed(deadline)
        try:
            smtp.send(data)
        except OSError as exc:
            raise self._lost(exc, deadline) from None

    def _read(self, deadline: float) -> tuple[int, bytes]:
        smtp = self._armed(deadline)
        try:
            return smtp.getreply()
        except OSError as exc:  # smtplib's errors, ssl's and the socket's are all OSErrors
            raise self._lost(exc, deadline) from None

    def _armed(self, deadline: float) -> smtplib.SMTP:
        """Bound the next socket call by the deadline, and have the watchdog enforce it."""
        smtp = self._smtp
        if smtp is None or smtp.sock is None:
            raise _LinkLost("connection closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _LinkLost(self._deadline_detail())
        timeout = min(self.config.timeout_seconds, remaining)
        current = smtp.sock.gettimeout()
        # settimeout is an ioctl made without the GIL, and a pipelined message makes half a
        # dozen socket calls: keep the timeout in force while it still ends by the deadline and
        # within 5 % of it (a call may give up that much early, never late).
        if current is None or not timeout * 0.95 <= current <= timeout:
            smtp.sock.settimeout(timeout)
        self._watchdog.watch(self, smtp, deadline)
        return smtp

    def _lost(self, exc: OSError, deadline: float) -> _LinkLost:
        if time.monotonic() >= deadline:
            return _LinkLost(self._deadline_detail())
        return _LinkLost(f"{type(exc).__name__}: {exc}")

    def _deadline_detail(self) -> str:
        return "transaction deadline passed"

    def _delivered(self, code: int, reply: bytes) -> Delivered:
        self.sent_count += 1
        text = reply_text(reply)
        return Delivered(self.config.name, code, text, parse_queue_id(text))

    def _refusal(self, code: int, reply: bytes, stage: Stage, *, reset: bool = True) -> SendError:
        """Classify a refusing reply; keep the session for the next message if it can be."""
        self._stage = stage
        # Without a reset the caller knows what is still in flight and keeps _in_transaction.
        return self._reply_failure(code, reply, reset=reset)

    def _link_error(self, kind: FailureKind, detail: str, key: object = None) -> SendError:
        self._break()
        error = self._error(kind, detail)
        if kind is FailureKind.UNKNOWN_OUTCOME:
            # Logged here, where it is certain, with the caller's key (a job id) when it gave one.
            logger.warning(
                "event=possible_duplicate provider=%s key=%s reason=%r",
                self.config.name,
                key,
                error.message,
            )
        return error

    def reset(self) -> None:
        """Abort the current transaction with RSET; a session whose RSET fails is marked broken."""
        if self._simple_command(b"RSET\r\n") == 250:
            self._in_transaction = False
        else:
            self._break()

    def noop_ok(self) -> bool:
        """Check with NOOP that the provider still answers; mark the session broken if not."""
        ok = self._simple_command(b"NOOP\r\n") == 250
        if not ok:
            self._break()
        return ok

    def _simple_command(self, line: bytes) -> int | None:
        """Send one command and return its reply code; None when the session cannot answer."""
        if not self.usable:
            return None
        deadline = time.monotonic() + self.config.timeout_seconds
        try:
            with self._watched(deadline):
                self._write(line, deadline)
                return self._read(deadline)[0]
        except _LinkLost:
            return None

    def close(self) -> None:
        """Say QUIT if the session is healthy, then close the socket; never raises."""
        healthy = self.usable
        if healthy:
            self._quit()
        smtp, self._smtp = self._smtp, None
        self._broken = True
        self._watchdog.unwatch(self)
        if smtp is not None:
            smtp.close()
            logger.debug(
                "smtp session closed provider=%s sent=%d", self.config.name, self.sent_count
            )

    def _quit(self) -> None:
        # QUIT is a courtesy: a stalled server must not hold a worker's shutdown for long.
        deadline = time.monotonic() + min(self.config.timeout_seconds, _QUIT_TIMEOUT_SECONDS)
        try:
            with self._watched(deadline):
                self._write(b"QUIT\r\n", deadline)
                self._read(deadline)
        except _LinkLost:
            pass  # the server went away first: nothing left to say goodbye to

    def _break(self) -> None:
        """Drop the connection without QUIT: its state is unknown, so nothing more goes on it."""
        self._broken = True
        self._watchdog.unwatch(self)
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = make_tls_context(self.config)
        return self._ssl_context

    def _connect(
        self, tls: TlsMode, context: ssl.SSLContext | None, deadline: float
    ) -> smtplib.SMTP:
        host, port, timeout = self.config.host, self.config.port, self.config.timeout_seconds
        if tls is TlsMode.SSL:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                local_hostname=self._local_hostname, timeout=timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(local_hostname=self._local_hostname, timeout=timeout)
        # What the constructor would do with a host, split so that the watchdog watches the
        # greeting too: _host is the name TLS verifies (smtplib sets it only there).
        smtp._host = host  # type: ignore[attr-defined]
        self._watchdog.watch(self, smtp, deadline)
        code, reply = smtp.connect(host, port)
        if code != 220:
            smtp.close()
            raise smtplib.SMTPConnectError(code, reply)
        return smtp

    @contextmanager
    def _watched(self, deadline: float) -> Iterator[None]:
        """Have the watchdog end whatever blocks past the deadline in this block."""
        try:
            yield
        finally:
            self._watchdog.unwatch(self)

    @contextmanager
    def _failures_as_send_errors(self) -> Iterator[None]:
        """Turn whatever smtplib, ssl or the socket raise into a classified SendError."""
        try:
            yield
        except smtplib.SMTPRecipientsRefused as exc:
            # One RCPT per message, so one entry; its code may be 4xx or 5xx.
            code, reply = next(iter(exc.recipients.values()), (None, b""))
            error, cause = self._reply_failure(code, reply), exc
        except smtplib.SMTPAuthenticationError as exc:
            self._stage = "auth"
            error, cause = self._reply_failure(exc.smtp_code, exc.smtp_error), exc
        except smtplib.SMTPResponseException as exc:
            error, cause = self._reply_failure(exc.smtp_code, exc.smtp_error), exc
        except ssl.SSLCertVerificationError as exc:
            error, cause = self._link_failure(FailureKind.PROVIDER_FAULT, exc), exc
        except smtplib.SMTPServerDisconnected as exc:
            # smtplib reports read timeouts and resets as a disconnect too.
            error, cause = self._link_failure(FailureKind.TRANSIENT, exc), exc
        except smtplib.SMTPException as exc:
            # No STARTTLS, no AUTH, no mechanism we speak: the provider cannot serve this config.
            error, cause = self._link_failure(FailureKind.PROVIDER_FAULT, exc), exc
        except (ConnectionRefusedError, socket.gaierror) as exc:
            # Nobody listens (or the name does not resolve): a fault of this provider that the
            # breaker must count. The job still retries, elsewhere, as for any provider fault.
            error, cause = self._link_failure(FailureKind.PROVIDER_FAULT, exc), exc
        except ssl.SSLError as exc:
            error, cause = self._link_failure(self._ssl_failure_kind(exc), exc), exc
        except OSError as exc:
            error, cause = self._link_failure(FailureKind.TRANSIENT, exc), exc
        except ValueError as exc:
            # A malformed or non-ASCII address: refused before a byte of it is sent.
            error, cause = self._bad_input_failure(exc), exc
        except BaseException:
            # Interrupted mid-command (a signal, a task time limit): the stream may hold half a
            # message, so an RSET could be read as data. Never reuse this connection.
            self._break()
            raise
        else:
            return
        # Chain the original for debugging unless a server echoed a secret into it.
        raise error from (None if self._mentions_secret(cause) else cause)

    def _ssl_failure_kind(self, exc: ssl.SSLError) -> FailureKind:
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return FailureKind.TRANSIENT  # the peer hung up
        if self._stage in ("connect", "helo"):
            return FailureKind.PROVIDER_FAULT  # the handshake failed: versions, ciphers, not TLS
        return FailureKind.TRANSIENT

    def _reply_failure(
        self, code: int | None, reply: bytes | str | None, *, reset: bool = True
    ) -> SendError:
        text = reply_text(reply)
        enhanced = parse_enhanced(text)
        kind = classify(code, enhanced, stage=self._stage)
        if kind is FailureKind.TRANSIENT and self._throttle_rules.match(code, enhanced, text):
            kind = FailureKind.THROTTLED
        lost = code in (421, -1) or self._smtp is None or self._smtp.sock is None
        if self._stage in _OPENING_STAGES or lost:
            self._break()  # 421 announces the server is closing; -1 is a garbled exchange
        elif reset:
            self.reset()  # refused, but the connection is fine for the next message
        return self._error(kind, f"{code} {text}", code, enhanced)

    def _link_failure(self, kind: FailureKind, exc: BaseException) -> SendError:
        self._break()
        return self._error(kind, f"{type(exc).__name__}: {exc}", None, None)

    def _bad_input_failure(self, exc: ValueError) -> SendError:
        if self._stage in _OPENING_STAGES:
            self._break()
            return self._error(FailureKind.PROVIDER_FAULT, f"bad provider setting: {exc}")
        self.reset()
        return self._error(FailureKind.BAD_DATA, f"{type(exc).__name__}: {exc}")

    def _error(
        self,
        kind: FailureKind,
        detail: str,
        code: int | None = None,
        enhanced: str | None = None,
    ) -> SendError:
        message = self._scrub(f"{self.config.name}: {self._stage}: {detail}")
        return SendError(kind, message, smtp_code=code, enhanced=enhanced)

    def _mentions_secret(self, exc: BaseException) -> bool:
        seen = f"{exc} {exc.args!r}"
        return self._scrub(seen) != seen

    def _scrub(self, text: str) -> str:
        """Remove the password, plain or as AUTH sent it, from text a server may have echoed."""
        for secret in _secret_forms(self.config.username or "", self.config.password):
            text = text.replace(secret, "***")
        return text


def _first_refusal(replies: list[tuple[Stage, int, bytes]]) -> tuple[Stage, int, bytes] | None:
    """The first reply to MAIL, RCPT or DATA that is not the one a good transaction gets."""
    for (stage, code, reply), (_, expected) in zip(replies, _EXPECTED, strict=False):
        if code not in expected:
            return stage, code, reply
    return None


def _secret_forms(username: str, password: str | None) -> list[str]:
    if not password:
        return []
    plain = f"\0{username}\0{password}".encode()
    return [
        password,
        base64.b64encode(password.encode()).decode(),  # AUTH LOGIN
        base64.b64encode(plain).decode(),  # AUTH PLAIN
    ]


def make_tls_context(config: ProviderConfig) -> ssl.SSLContext:
    """Build the verifying client TLS context for a provider (its CA bundle if it has one)."""
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ValueError) as exc:
        # A missing or unreadable CA bundle is a setting to fix, not something a retry cures.
        raise SendError(
            FailureKind.PROVIDER_FAULT,
            f"{config.name}: connect: cannot load ca_file {config.ca_file!r}: {exc}",
        ) from exc
