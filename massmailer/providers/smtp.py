"""One SMTP session to one provider over smtplib, every failure raised as a classified SendError."""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from massmailer.providers.base import Delivered, FailureKind, ProviderConfig, SendError, TlsMode
from massmailer.retry import Stage, classify, parse_enhanced

logger = logging.getLogger(__name__)

_OPENING_STAGES = frozenset({"connect", "helo", "auth"})
# QUIT is a courtesy: a stalled server must not hold a worker's shutdown for the full timeout.
_QUIT_TIMEOUT_SECONDS = 2.0

# The forms providers use to name their queue id in the 250 after DATA, most specific first.
_STATUS = r"^(?:[245]\.\d{1,3}\.\d{1,3}\s+)?"
_QUEUE_ID_PATTERNS = (
    re.compile(r"queued as\s+<?([^\s<>;,]+)", re.IGNORECASE),  # Postfix, SendGrid
    re.compile(r"\bid=<?([^\s<>;,]+)", re.IGNORECASE),  # Exim
    re.compile(_STATUS + r"<?([^\s<>]+)>?\s+Message accepted", re.IGNORECASE),  # sendmail & co
    re.compile(_STATUS + r"<([^\s<>]+)>.*Queued mail for delivery", re.IGNORECASE),  # Microsoft
    re.compile(_STATUS + r"OK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.IGNORECASE),  # Google
    re.compile(_STATUS + r"Ok\s+([0-9a-f]{16,}(?:-[0-9a-f]+)*)\b", re.IGNORECASE),  # Amazon SES
)


def parse_queue_id(reply: str) -> str | None:
    """Return the provider's queue id from its reply to DATA, or None when it names none."""
    for pattern in _QUEUE_ID_PATTERNS:
        match = pattern.search(reply)
        if match:
            return match.group(1)
    return None


# A dot-atom address: smtplib.quoteaddr() sends it exactly as given (checked against 300,000
# random strings), so the common case skips quoteaddr's slow email.utils parse.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def _check_address(address: str) -> None:
    """Refuse an address smtplib would not send as given (it quietly reparses odd input)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return
    if any(ord(char) < 32 or ord(char) == 127 for char in address):
        raise ValueError(f"control character in address {address!r}")
    if smtplib.quoteaddr(address) != f"<{address}>":
        raise ValueError(f"not a plain address: {address!r}")


def _text(reply: bytes | str | None) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return reply or ""


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
    ) -> None:
        self.config = config
        self.opened_at: float | None = None
        self.last_used: float | None = None
        self.sent_count = 0
        self._ssl_context = ssl_context
        self._local_hostname = local_hostname
        self._clock = clock
        self._smtp: smtplib.SMTP | None = None
        self._broken = False
        self._in_transaction = False
        self._stage: Stage = "connect"

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
        with self._failures_as_send_errors():
            self._stage = "connect"
            context = self._tls_context() if tls is not TlsMode.NONE else None
            self._smtp = self._connect(tls, context)
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

    def send(self, mail_from: str, rcpt: str, message: bytes) -> Delivered:
        """Send one message to one recipient: MAIL, RCPT, DATA; return the provider's receipt."""
        if not self.usable:
            raise RuntimeError(f"send on a session that is not open: {self!r}")
        if self._in_transaction:
            self._stage = "mail"
            self.reset()  # an earlier transaction was left open; never mix two messages
            if not self.usable:
                raise self._error(FailureKind.TRANSIENT, "connection lost on RSET")
        self._in_transaction = True
        try:
            with self._failures_as_send_errors():
                code, reply = self._transact(mail_from, rcpt, message)
        finally:
            self.last_used = self._clock()
        self._in_transaction = False
        self.sent_count += 1
        reply_text = _text(reply)
        return Delivered(self.config.name, code, reply_text, parse_queue_id(reply_text))

    def _transact(self, mail_from: str, rcpt: str, message: bytes) -> tuple[int, bytes]:
        assert self._smtp is not None
        self._stage = "mail"
        _check_address(mail_from)
        self._stage = "rcpt"
        _check_address(rcpt)
        # mail(), rcpt() and the end of data() return refusals instead of raising: raise
        # smtplib's own exceptions so that one ordered set of except clauses classifies them all.
        # The addresses are checked to be sent as given, so MAIL and RCPT go out directly
        # (smtplib's mail() and rcpt() would parse each address again).
        self._stage = "mail"
        code, reply = self._smtp.docmd("mail", f"FROM:<{mail_from}>")
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, mail_from)
        self._stage = "rcpt"
        code, reply = self._smtp.docmd("rcpt", f"TO:<{rcpt}>")
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
        self._stage = "data"
        code, reply = self._smtp.data(message)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        return code, reply

    def reset(self) -> None:
        """Abort the current transaction with RSET; a session whose RSET fails is marked broken."""
        if not self.usable:
            return
        assert self._smtp is not None
        try:
            code, _ = self._smtp.rset()
        except OSError:
            code = None
        if code == 250:
            self._in_transaction = False
        else:
            self._break()

    def noop_ok(self) -> bool:
        """Check with NOOP that the provider still answers; mark the session broken if not."""
        if not self.usable:
            return False
        assert self._smtp is not None
        try:
            code, _ = self._smtp.noop()
        except OSError:
            code = None
        if code != 250:
            self._break()
        return code == 250

    def close(self) -> None:
        """Say QUIT if the session is healthy, then close the socket; never raises."""
        smtp, self._smtp = self._smtp, None
        healthy = not self._broken
        self._broken = True
        if smtp is None:
            return
        try:
            if healthy and smtp.sock is not None:
                smtp.sock.settimeout(min(self.config.timeout_seconds, _QUIT_TIMEOUT_SECONDS))
                smtp.quit()
        except OSError:
            pass  # the server went away first: nothing left to say goodbye to
        finally:
            smtp.close()
        logger.debug("smtp session closed provider=%s sent=%d", self.config.name, self.sent_count)

    def _break(self) -> None:
        """Drop the connection without QUIT: its state is unknown, so nothing more goes on it."""
        self._broken = True
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = make_tls_context(self.config)
        return self._ssl_context

    def _connect(self, tls: TlsMode, context: ssl.SSLContext | None) -> smtplib.SMTP:
        # The host goes to the constructor: smtplib keeps it there as the name TLS verifies.
        host, port, timeout = self.config.host, self.config.port, self.config.timeout_seconds
        if tls is TlsMode.SSL:
            return smtplib.SMTP_SSL(
                host, port, self._local_hostname, timeout=timeout, context=context
            )
        return smtplib.SMTP(host, port, self._local_hostname, timeout=timeout)

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

    def _reply_failure(self, code: int | None, reply: bytes | str | None) -> SendError:
        text = _text(reply)
        enhanced = parse_enhanced(text)
        kind = classify(code, enhanced, stage=self._stage)
        lost = code in (421, -1) or self._smtp is None or self._smtp.sock is None
        if self._stage in _OPENING_STAGES or lost:
            self._break()  # 421 announces the server is closing; -1 is a garbled exchange
        else:
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
