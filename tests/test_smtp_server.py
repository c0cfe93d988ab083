"""The fault-injecting SMTP server, driven by plain smtplib over real loopback sockets."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from massmailer.testing.smtp_server import FaultSMTPServer, Received, Rule
from massmailer.testing.tls import make_self_signed_cert, server_tls_context

pytestmark = pytest.mark.integration

SENDER = "bounces@sender.test"
MESSAGE = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: hi\r\n\r\nbody\r\n.dotted line\r\n"


@pytest.fixture
def server():
    with FaultSMTPServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


def connect(srv: FaultSMTPServer) -> smtplib.SMTP:
    return smtplib.SMTP(srv.host, srv.port, timeout=5)


def send(srv: FaultSMTPServer, rcpts: list[str] | None = None) -> dict:
    with connect(srv) as client:
        return client.sendmail(SENDER, rcpts or ["b@rcpt.test"], MESSAGE)


# -- rules, without sockets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"command": "HELO", "code": 550},
        {"command": "RCPT", "code": 99},
        {"command": "RCPT", "code": 600},
        {"command": "RCPT", "code": 550, "probability": 1.5},
        {"command": "RCPT", "code": 550, "times": -1},
    ],
)
def test_rule_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Rule(**kwargs)


@pytest.mark.parametrize(
    ("rule", "subject", "matches", "reply"),
    [
        (Rule("RCPT", 550), "any@rcpt.test", True, "550 5.1.1 User unknown"),
        (Rule("RCPT", 550, "5.1.1 Gone", match="gone@"), "ok@rcpt.test", False, "550 5.1.1 Gone"),
        (Rule("DATA", 554, match="spam"), b"Subject: spam\r\n", True, "554 5.7.1 Message rejected"),
        (Rule("MAIL", 451, "4.7.1 Slow down"), "a@b.test", True, "451 4.7.1 Slow down"),
    ],
)
def test_rule_matches_and_replies(rule: Rule, subject, matches: bool, reply: str) -> None:
    assert rule.matches(subject) is matches
    assert rule.reply() == reply


# -- storing and counting ------------------------------------------------------------------


def test_stores_envelope_and_data_and_names_a_queue_id(server: FaultSMTPServer) -> None:
    with connect(server) as client:
        client.ehlo()
        client.mail(SENDER)
        client.rcpt("b@rcpt.test")
        code, reply = client.data(MESSAGE)

    assert code == 250
    assert re.fullmatch(rb"2\.0\.0 Ok: queued as [0-9A-F]+", reply)
    [received] = server.messages
    assert received == Received(SENDER, ["b@rcpt.test"], MESSAGE, received.connection_id)
    assert received.message()["Subject"] == "hi"


def test_one_session_many_messages_is_one_connection(server: FaultSMTPServer) -> None:
    with connect(server) as client:
        for _ in range(5):
            client.sendmail(SENDER, ["b@rcpt.test"], MESSAGE)
            client.rset()

    assert server.connections == 1
    assert list(server.messages_per_connection.values()) == [5]
    send(server)
    assert server.connections == 2
    assert sorted(server.messages_per_connection.values()) == [1, 5]


def test_reset_forgets_messages_and_counters(server: FaultSMTPServer) -> None:
    send(server)
    server.reset()
    assert (server.messages, server.message_count, server.connections) == ([], 0, 0)


def test_wait_for_messages_reports_a_timeout(server: FaultSMTPServer) -> None:
    send(server)
    assert server.wait_for_messages(1, timeout=1)
    assert not server.wait_for_messages(2, timeout=0.05)


# -- failing on cue ------------------------------------------------------------------------


def test_550_on_one_recipient_refuses_only_that_recipient() -> None:
    rule = Rule("RCPT", 550, "5.1.1 User unknown", match="gone@")
    with FaultSMTPServer(rules=[rule]) as srv:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(srv, ["gone@rcpt.test"])
        partly = send(srv, ["gone@rcpt.test", "ok@rcpt.test"])

        assert refused.value.recipients == {"gone@rcpt.test": (550, b"5.1.1 User unknown")}
        assert partly == {"gone@rcpt.test": (550, b"5.1.1 User unknown")}
        assert [m.rcpt_tos for m in srv.messages] == [["ok@rcpt.test"]]


def test_451_with_probability_fails_that_share_and_repeats_with_the_seed() -> None:
    def failures(seed: int) -> list[bool]:
        with FaultSMTPServer(rules=[Rule("DATA", 451, probability=0.3)], seed=seed) as srv:
            pattern = []
            with connect(srv) as client:
                for _ in range(200):
                    try:
                        client.sendmail(SENDER, ["b@rcpt.test"], MESSAGE)
                        pattern.append(False)
                    except smtplib.SMTPDataError as error:
                        assert error.smtp_code == 451
                        pattern.append(True)
            assert srv.message_count == pattern.count(False)
            return pattern

    first = failures(seed=7)
    assert 40 <= sum(first) <= 80
    assert failures(seed=7) == first


def test_times_caps_how_often_a_rule_fires() -> None:
    with FaultSMTPServer(rules=[Rule("RCPT", 452, times=1)]) as srv:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(srv)
        send(srv)
        assert srv.message_count == 1


def test_rules_change_at_runtime(server: FaultSMTPServer) -> None:
    server.set_rules([Rule("MAIL", 554, "5.7.1 Sender blocked")])
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(server)
    server.set_rules([])
    send(server)

    assert refused.value.smtp_code == 554
    assert server.message_count == 1


@pytest.mark.parametrize(
    ("rule", "command"),
    [
        (Rule("EHLO", 554, "5.7.1 Go away"), lambda client: client.ehlo()),
        (Rule("NOOP", 451, "4.3.0 Busy"), lambda client: client.noop()),
        (Rule("RSET", 451, "4.3.0 Busy"), lambda client: client.rset()),
        (Rule("AUTH", 454, "4.7.0 Try later"), lambda client: client.docmd("AUTH", "PLAIN")),
    ],
)
def test_rule_answers_its_command(rule: Rule, command) -> None:
    with FaultSMTPServer(rules=[rule], auth_require_tls=False) as srv, connect(srv) as client:
        if rule.command != "EHLO":
            client.ehlo()
        assert command(client) == (rule.code, rule.text.encode())


def test_421_replies_then_closes_the_connection() -> None:
    with (
        FaultSMTPServer(rules=[Rule("MAIL", 421)]) as srv,
        socket.create_connection((srv.host, srv.port), timeout=5) as sock,
    ):
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        sock.sendall(b"HELO client.test\r\n")
        assert replies.readline().startswith(b"250 ")
        sock.sendall(b"MAIL FROM:<a@sender.test>\r\n")
        assert (
            replies.readline()
            == b"421 4.3.2 Service not available, closing transmission channel\r\n"
        )
        assert replies.readline() == b""  # the server closed the connection


@pytest.mark.parametrize("code", [421, 554])
def test_greeting_rule_refuses_the_connection(code: int) -> None:
    with FaultSMTPServer(rules=[Rule("CONNECT", code)]) as srv:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect(srv)
        assert refused.value.smtp_code == code


@pytest.mark.parametrize(
    "faults",
    [
        {"rules": [Rule("DATA", 0)]},
        {"rules": [Rule("RCPT", 0)]},
        {"hangup_after_data_probability": 1.0},
    ],
)
def test_hang_up_disconnects_without_a_reply(faults: dict) -> None:
    with FaultSMTPServer(**faults) as srv:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            send(srv)
        assert srv.messages == []


def test_latency_delays_each_reply_without_blocking_other_sessions() -> None:
    with FaultSMTPServer(latency_seconds=0.2) as srv:
        with connect(srv) as client:
            started = time.monotonic()
            assert client.noop()[0] == 250
            assert time.monotonic() - started >= 0.2

        def session(_: int) -> int:
            with connect(srv) as client:  # greeting, NOOP and QUIT: 0.6 s each
                return client.noop()[0]

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(session, range(4))) == [250] * 4
        assert time.monotonic() - started < 1.5  # one after another would take 2.4 s


# -- AUTH and TLS --------------------------------------------------------------------------


def test_auth_accepts_the_right_password_and_535s_a_wrong_one() -> None:
    with FaultSMTPServer(credentials={"user": "secret"}, auth_require_tls=False) as srv:
        with connect(srv) as client:
            client.login("user", "secret")
            client.sendmail(SENDER, ["b@rcpt.test"], MESSAGE)
        with connect(srv) as client, pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login("user", "guess")
        with pytest.raises(smtplib.SMTPSenderRefused) as anonymous:
            send(srv)

        assert srv.message_count == 1
    assert wrong.value.smtp_code == 535
    assert wrong.value.smtp_error.startswith(b"5.7.8")
    assert anonymous.value.smtp_code == 530


def test_starttls_verifies_against_the_cert_and_then_allows_auth(cert: tuple[str, str]) -> None:
    cert_path, key_path = cert
    tls = server_tls_context(cert_path, key_path)
    with FaultSMTPServer(tls_context=tls, credentials={"user": "secret"}) as srv:
        with connect(srv) as client:
            client.starttls(context=ssl.create_default_context(cafile=cert_path))
            client.login("user", "secret")
            client.sendmail(SENDER, ["b@rcpt.test"], MESSAGE)
        with connect(srv) as client, pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())

        assert srv.message_count == 1
        assert srv.connections == 2  # STARTTLS does not count as another connection


def test_implicit_tls_verifies_against_the_cert(cert: tuple[str, str]) -> None:
    cert_path, key_path = cert
    tls = server_tls_context(cert_path, key_path)
    with FaultSMTPServer(tls_context=tls, implicit_tls=True) as srv:
        trusted = ssl.create_default_context(cafile=cert_path)
        with smtplib.SMTP_SSL(srv.host, srv.port, context=trusted, timeout=5) as client:
            client.sendmail(SENDER, ["b@rcpt.test"], MESSAGE)
        with pytest.raises(ssl.SSLCertVerificationError):
            smtplib.SMTP_SSL(srv.host, srv.port, context=ssl.create_default_context(), timeout=5)

        assert srv.message_count == 1


# -- command line --------------------------------------------------------------------------


def test_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "massmailer.testing.smtp_server", "--port", "0"]
    command += ["--fail-rate", "0.5", "--fail-code", "451", "--seed", "3"]
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(
        command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            line = process.stdout.readline()
            host, port = re.fullmatch(r"listening (\S+):(\d+)\n", line).groups()
            delivered = 0
            with smtplib.SMTP(host, int(port), timeout=5) as client:
                for _ in range(20):
                    try:
                        client.sendmail(SENDER, ["b@rcpt.test"], MESSAGE)
                        delivered += 1
                    except smtplib.SMTPDataError as error:
                        assert error.smtp_code == 451
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            process.kill()

        assert 0 < delivered < 20
        assert f"accepted {delivered} messages on 1 connections" in process.stderr.read()


# -- PIPELINING (RFC 2920) -----------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_pipelining_is_advertised_only_when_asked(pipelining: bool) -> None:
    with FaultSMTPServer(pipelining=pipelining) as srv, connect(srv) as client:
        client.ehlo()
        assert client.has_extn("pipelining") is pipelining


def _read_replies(reader, count: int) -> list[str]:
    replies = []
    while len(replies) < count:
        line = reader.readline().decode().rstrip("\r\n")
        if line[3:4] != "-":  # the last line of a (multiline) reply
            replies.append(line)
    return replies


def test_pipelined_commands_and_a_chained_envelope_are_answered_in_order() -> None:
    def envelope(rcpt: str) -> bytes:
        return f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()

    body = b"Subject: one\r\n\r\nfirst\r\n.\r\n"
    with FaultSMTPServer(rules=[Rule("RCPT", 550, match="gone")]) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            reader = sock.makefile("rb")
            sock.sendall(b"EHLO client.test\r\n")
            sock.sendall(envelope("b@rcpt.test"))  # one write: MAIL, RCPT, DATA
            first = _read_replies(reader, 5)
            sock.sendall(body + envelope("gone@rcpt.test"))  # the next envelope behind the dot
            second = _read_replies(reader, 4)
            sock.sendall(b"RSET\r\nQUIT\r\n")
            last = _read_replies(reader, 2)
        messages = srv.messages

    assert [r[:3] for r in first] == ["220", "250", "250", "250", "354"]
    assert [r[:3] for r in second] == ["250", "250", "550", "503"]
    assert [r[:3] for r in last] == ["250", "221"]
    assert [(m.rcpt_tos, m.message()["Subject"]) for m in messages] == [(["b@rcpt.test"], "one")]
