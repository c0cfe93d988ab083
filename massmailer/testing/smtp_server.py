"""A real SMTP server on loopback that stores what it accepts and fails on cue.

Tests, the demo and benchmarks send to it with smtplib, so failure paths (4xx, 5xx, 421, hang-ups,
slow replies, AUTH, TLS) run over real sockets. It is aiosmtpd in a background thread; the rules
and records live in `FaultState` (smtp_faults.py), the sessions here only apply them.
Run `python -m massmailer.testing.smtp_server --help` for the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import ssl
import sys
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from massmailer.testing.smtp_faults import (
    COMMANDS,
    DEFAULT_TEXT,
    HANG_UP,
    HANG_UP_REPLY,
    STORE_THEN_HANG_UP_REPLY,
    FaultState,
    Received,
    Rule,
)
from massmailer.testing.tls import server_tls_context

__all__ = ["COMMANDS", "DEFAULT_TEXT", "HANG_UP", "FaultSMTPServer", "Received", "Rule", "main"]


class FaultSMTPServer(FaultState):
    """An SMTP server on a loopback port that stores what it accepts and fails on cue."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rules: Iterable[Rule] = (),
        seed: int | None = 0,
        latency_seconds: float = 0.0,
        hangup_after_data_probability: float = 0.0,
        credentials: Mapping[str, str] | None = None,
        auth_require_tls: bool = True,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        keep_messages: bool = True,
        pipelining: bool = True,
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        super().__init__(
            rules,
            seed=seed,
            hangup_after_data_probability=hangup_after_data_probability,
            keep_messages=keep_messages,
        )
        self.host = host
        self.latency_seconds = latency_seconds
        self.credentials = dict(credentials) if credentials else None
        # Advertise PIPELINING (RFC 2920) in the EHLO reply, as Postfix and the big providers
        # do. aiosmtpd serves pipelined input correctly (it reads commands one by one from its
        # stream) but does not advertise it; False keeps clients to one command per round trip.
        self.pipelining = pipelining
        self._port = port
        self._smtp_kwargs: dict[str, Any] = {
            "server_hostname": "fault-smtp.localhost",  # else socket.getfqdn() on every session
            "tls_context": None if implicit_tls else tls_context,
            "require_starttls": require_starttls,
            # aiosmtpd only counts STARTTLS as encryption; an implicit TLS socket is encrypted too.
            "auth_require_tls": auth_require_tls and not implicit_tls,
            "authenticator": self._authenticate if credentials else None,
        }
        self._ssl_context = tls_context if implicit_tls else None
        self._controller: _Controller | None = None

    def start(self) -> FaultSMTPServer:
        """Listen and serve in a background thread until stop()."""
        if self._controller is not None:
            raise RuntimeError("FaultSMTPServer already started")
        controller = _Controller(self, self._ssl_context, self._smtp_kwargs)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop serving, end the open sessions and close the listening socket."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> FaultSMTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listening port (the OS's choice once started with port 0)."""
        return self._controller.port if self._controller is not None else self._port

    async def answer(self, command: str, subject: str | bytes) -> str | None:
        """Wait the configured latency, then return the reply of the rule that fires, if any."""
        if self.latency_seconds > 0:
            # asyncio.sleep, not time.sleep: the other sessions keep being served meanwhile.
            await asyncio.sleep(self.latency_seconds)
        return self.reply_for(command, subject)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or not self.credentials:
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        password = auth_data.password.decode(errors="replace")
        # An unhandled failure without a message makes aiosmtpd answer "535 5.7.8 ...".
        success = self.credentials.get(login) == password
        return AuthResult(success=success, handled=False, auth_data=auth_data)


class _Handler:
    """aiosmtpd's hooks: delay each reply, apply the rules, record accepted messages."""

    def __init__(self, faults: FaultSMTPServer) -> None:
        self._faults = faults

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, name: str):
        return await self._faults.answer("EHLO", name) or MISSING

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, name: str, responses: list[str]
    ) -> list[str]:
        reply = await self._faults.answer("EHLO", name)
        if reply is not None:
            return [reply]
        session.host_name = name  # the five-argument hook takes this duty over from aiosmtpd
        if self._faults.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ):
        reply = await self._faults.answer("MAIL", address)
        if reply is None and self._faults.credentials and not session.authenticated:
            reply = f"530 {DEFAULT_TEXT[530]}"
        return reply or MISSING

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ):
        return await self._faults.answer("RCPT", address) or MISSING

    async def handle_DATA(self, server: _FaultSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        reply = await self._faults.answer("DATA", data)
        if reply is None and self._faults.hang_up_after_data():
            reply = HANG_UP_REPLY
        mail_from = envelope.mail_from or ""
        if reply == STORE_THEN_HANG_UP_REPLY:
            self._faults.store_unacknowledged(
                mail_from, envelope.rcpt_tos, data, server.connection_id
            )
            return HANG_UP_REPLY
        if reply is not None:
            return reply
        return self._faults.accept(mail_from, envelope.rcpt_tos, data, server.connection_id)

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope, args: list):
        return await self._faults.answer("AUTH", args[0] if args else "") or MISSING

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope):
        return await self._faults.answer("RSET", "") or MISSING

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str):
        return await self._faults.answer("NOOP", arg or "") or MISSING

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope):
        await self._faults.answer("QUIT", "")  # no rules for QUIT, only the latency
        return MISSING


class _FaultSMTP(SMTP):
    """One SMTP session: numbers its connection, replaces the greeting, hangs up on cue."""

    _PLAIN_ADDRESS = re.compile(r"\s*<([^<>\s\"]*)>(.*)\Z", re.DOTALL)

    def __init__(self, handler: _Handler, faults: FaultSMTPServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._faults = faults
        self.connection_id = 0
        self._greeted = False
        self._hung_up = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again for the TLS layer
        super().connection_made(transport)
        if first:
            self.connection_id = self._faults.open_connection()

    async def push(self, status: AnyStr) -> None:
        if self._hung_up:
            return
        if not self._greeted:
            # aiosmtpd sends the greeting without a hook: the first reply of a session is it.
            self._greeted = True
            peer = self.session.peer if self.session else None
            reply = await self._faults.answer("CONNECT", peer[0] if peer else "")
            status = reply or status  # type: ignore[assignment]
        if status == HANG_UP_REPLY:
            self._hang_up()
            return
        await super().push(status)
        # RFC 5321 3.8: a server that answers 421 closes the transmission channel.
        if isinstance(status, str) and status.startswith("421"):
            self._hang_up()

    def _hang_up(self) -> None:
        # Closing the transport makes aiosmtpd cancel this session's command loop.
        self._hung_up = True
        if self.transport is not None:
            self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd runs every address through the email header parser and defines a
        # typing.Protocol class per call: a third of its time per message. <plain> needs neither.
        match = self._PLAIN_ADDRESS.match(arg)
        if match is None:
            return super()._getaddr(arg)
        return match.group(1), match.group(2)


class _Controller(Controller):
    """aiosmtpd's threaded controller, bound to an OS-chosen port, without a probe connection."""

    def __init__(
        self,
        faults: FaultSMTPServer,
        ssl_context: ssl.SSLContext | None,
        smtp_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(
            _Handler(faults),
            hostname=faults.host,
            port=faults.port,
            ssl_context=ssl_context,
            **smtp_kwargs,
        )
        self._faults = faults

    def factory(self) -> SMTP:
        return _FaultSMTP(self.handler, self._faults, loop=self.loop, **self.SMTP_kwargs)

    def _create_server(self):  # type: ignore[override]
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
        )
        # aiosmtpd 1.4 passes port 0 on as is: read back the port the OS chose.
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _trigger_server(self) -> None:
        # aiosmtpd checks factory() through a real connection, which would count as a client and
        # draw from the seeded generator; build one session object directly instead.
        self._factory_invoker()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m massmailer.testing.smtp_server",
        description="A local SMTP sink that fails on cue, for the demo and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525, help="0 lets the OS choose")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of failed replies")
    parser.add_argument("--fail-code", type=int, default=451)
    parser.add_argument("--fail-command", choices=sorted(COMMANDS), default="DATA")
    parser.add_argument("--hangup-rate", type=float, default=0.0, help="hang-ups after DATA")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each reply")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require AUTH with these")
    parser.add_argument("--tls-cert", help="PEM certificate: offer STARTTLS (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    parser.add_argument(
        "--no-pipelining", action="store_true", help="do not advertise PIPELINING (RFC 2920)"
    )
    return parser.parse_args(argv)


def _server_from_args(args: argparse.Namespace) -> FaultSMTPServer:
    rules = []
    if args.fail_rate > 0:
        rules.append(Rule(args.fail_command, args.fail_code, probability=args.fail_rate))
    credentials = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        credentials = {user: password}
    tls_context = None
    if args.tls_cert:
        tls_context = server_tls_context(args.tls_cert, args.tls_key or args.tls_cert)
    return FaultSMTPServer(
        args.host,
        args.port,
        rules=rules,
        seed=args.seed,
        latency_seconds=args.latency_ms / 1000,
        hangup_after_data_probability=args.hangup_rate,
        credentials=credentials,
        auth_require_tls=False,  # a local test sink: let clients log in over plain TCP too
        tls_context=tls_context,
        implicit_tls=args.implicit_tls,
        keep_messages=False,  # nobody outside this process could read them: only count
        pipelining=not args.no_pipelining,
    )


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print `listening HOST:PORT` once ready."""
    server = _server_from_args(_parse_args(argv))
    # aiosmtpd logs a warning on every login about its own deprecated Session.login_data.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    with server:
        print(f"listening {server.host}:{server.port}", flush=True)
        stopping.wait()
    print(
        f"accepted {server.message_count} messages on {server.connections} connections",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
