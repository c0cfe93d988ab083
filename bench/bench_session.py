"""One SMTP session to a distant provider: sendmail-style vs pipelined vs chained messages/s.

A LatencyRelay puts the server N ms of round trip away (every byte delayed half of it each way),
in front of Postfix's smtp-sink (C, advertises PIPELINING; installed by
../shared/install-smtp-sink.sh) when present, else the project's FaultSMTPServer. Each mode sends
the same messages over one open session after a warm-up message:

- sendmail-style: smtplib's `sendmail()`, each command waiting for its reply (4 round trips);
- pipelined: `SmtpSession.send()`, MAIL+RCPT+DATA in one write, then the data (2 round trips);
- chained: `SmtpSession.send_many()`, the next envelope behind each final dot (1 round trip).

    python bench/bench_session.py --rtt-ms 20 --messages 100
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from massmailer.delivery.providers.base import Delivered, Envelope, ProviderConfig
from massmailer.delivery.providers.smtp import SmtpSession
from massmailer.testing.relay import LatencyRelay
from massmailer.testing.smtp_server import FaultSMTPServer

SENDER = "bounces@mailer.example.com"


def message(n: int) -> bytes:
    head = f"From: news@example.com\r\nTo: user{n}@example.org\r\nSubject: bench {n}\r\n\r\n"
    return head.encode() + (b"x" * 76 + b"\r\n") * 25  # about 2 kB, a typical small email


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_server() -> Iterator[tuple[str, int]]:
    """An SMTP server on loopback: smtp-sink when installed, else FaultSMTPServer."""
    if shutil.which("smtp-sink"):
        port = free_port()
        proc = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "256"])
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield "smtp-sink (C)", port
        finally:
            proc.terminate()
            proc.wait()
        return
    with FaultSMTPServer(keep_messages=False) as server:
        yield "FaultSMTPServer (aiosmtpd)", server.port


def sendmail_style(port: int, count: int) -> float:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(SENDER, ["warm@example.org"], message(0))
        started = time.monotonic()
        for n in range(1, count + 1):
            client.sendmail(SENDER, [f"user{n}@example.org"], message(n))
        return count / (time.monotonic() - started)


def session_for(port: int) -> SmtpSession:
    session = SmtpSession(ProviderConfig("far", "127.0.0.1", port, timeout_seconds=30))
    session.open()
    if not session.pipelining:
        raise SystemExit("the server does not advertise PIPELINING")
    return session


def pipelined(port: int, count: int) -> float:
    session = session_for(port)
    session.send(SENDER, "warm@example.org", message(0))
    started = time.monotonic()
    for n in range(1, count + 1):
        session.send(SENDER, f"user{n}@example.org", message(n))
    rate = count / (time.monotonic() - started)
    session.close()
    return rate


def chained(port: int, count: int) -> float:
    session = session_for(port)
    envelopes = (Envelope(SENDER, f"user{n}@example.org", message(n)) for n in range(count + 1))
    started = None
    for _, outcome in session.send_many(envelopes):
        if not isinstance(outcome, Delivered):
            raise SystemExit(f"not delivered: {outcome!r}")
        started = started or time.monotonic()  # from the first outcome: the warm-up
    rate = count / (time.monotonic() - started)
    session.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    with local_server() as (name, port), LatencyRelay("127.0.0.1", port, args.rtt_ms) as relay:
        print(f"server: {name}; round trip {args.rtt_ms:g} ms; {args.messages} messages a mode")
        rates = {
            "sendmail-style (smtplib.sendmail)": sendmail_style(relay.port, args.messages),
            "pipelined (SmtpSession.send)": pipelined(relay.port, args.messages),
            "chained (SmtpSession.send_many)": chained(relay.port, args.messages),
        }
    base = next(iter(rates.values()))
    ideal = {0: 4, 1: 2, 2: 1}
    for index, (mode, rate) in enumerate(rates.items()):
        trips = 1000 / rate / args.rtt_ms
        print(
            f"{mode:36} {rate:7.1f} messages/s  {rate / base:5.2f}x  "
            f"{trips:4.2f} round trips a message (ideal {ideal[index]})"
        )


if __name__ == "__main__":
    main()
