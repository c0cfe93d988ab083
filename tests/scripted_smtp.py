"""A bare SMTP server on a real socket for the behaviours aiosmtpd will not show.

It answers 354 to DATA after a refused recipient (as some pipelining servers do), and it can
dribble a reply one byte at a time forever, the case smtplib's per-call timeout cannot bound.
It records every line it reads, so tests assert what went over the wire.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

DRIBBLE = "dribble"  # a reply that never ends: one byte every `dribble_seconds`


class ScriptedSMTPServer:
    """One-connection-at-a-time SMTP server; `replies` maps a verb (or "DOT") to its reply."""

    def __init__(
        self,
        replies: dict[str, str] | None = None,
        *,
        pipelining: bool = True,
        dribble_seconds: float = 0.2,
    ) -> None:
        self.replies = {"MAIL": "250 ok", "RCPT": "250 ok", "DATA": "354 go on", "DOT": "250 ok"}
        self.replies.update(replies or {})
        self.pipelining = pipelining
        self.dribble_seconds = dribble_seconds
        self.lines: list[bytes] = []  # every command line, and each message's body lines
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedSMTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def commands(self) -> list[str]:
        """The verbs received, with "." for each lone end-of-data line."""
        verbs = []
        for line in self.lines:
            text = line.decode("ascii", "replace")
            verbs.append("." if text == "." else text.split(" ")[0].split(":")[0].upper())
        return verbs

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        send = _sender(conn, self._stopping, self.dribble_seconds)
        if not send(self.replies.get("CONNECT", "220 scripted ESMTP")):
            return
        in_data = False
        for raw in reader:
            line = raw.rstrip(b"\r\n")
            self.lines.append(line)
            if in_data:
                if line == b".":
                    in_data = False
                    if not send(self.replies["DOT"]):
                        return
                continue
            verb = line.split(b" ")[0].split(b":")[0].upper().decode("ascii", "replace")
            if verb == "EHLO":
                extension = "250-PIPELINING\r\n" if self.pipelining else ""
                send(f"250-scripted\r\n{extension}250 8BITMIME")
            elif verb in ("HELO", "RSET", "NOOP"):
                send("250 ok")
            elif verb == "QUIT":
                send("221 bye")
                return
            else:
                reply = self.replies.get(verb, "500 unknown")
                if not send(reply):
                    return
                in_data = verb == "DATA" and reply.startswith("354")


def _sender(
    conn: socket.socket, stopping: threading.Event, dribble_seconds: float
) -> Callable[[str], bool]:
    def send(reply: str) -> bool:
        """Write a reply; a DRIBBLE reply never ends (False once the client has gone)."""
        try:
            if reply != DRIBBLE:
                conn.sendall(reply.encode("ascii") + b"\r\n")
                return True
            # "250-" continuation lines forever: no reply line ever completes the reply.
            pattern = b"250-still thinking\r\n"
            for index in range(10**9):
                if stopping.is_set():
                    return False
                conn.sendall(pattern[index % len(pattern) : index % len(pattern) + 1])
                time.sleep(dribble_seconds)
        except OSError:
            return False
        return False

    return send
