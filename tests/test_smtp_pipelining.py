"""PIPELINING (RFC 2920), chaining and transaction deadlines of SmtpSession, on real sockets."""

from __future__ import annotations

import smtplib
import time

import pytest

from massmailer.delivery.providers.base import (
    QUEUE_ID_MAX,
    REPLY_MAX,
    Delivered,
    Envelope,
    FailureKind,
    ProviderConfig,
    SendError,
)
from massmailer.delivery.providers.smtp import SmtpSession
from massmailer.delivery.providers.smtp_wire import data_block, reply_text
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from tests.scripted_smtp import DRIBBLE, ScriptedSMTPServer

integration = pytest.mark.integration

SENDER = "bounces@mailer.example.com"


def message(n: int) -> bytes:
    return f"Subject: message {n}\r\n\r\nbody of message {n}\r\n".encode()


def envelope(n: int, rcpt: str | None = None) -> Envelope:
    return Envelope(SENDER, rcpt or f"user{n}@example.org", message(n), key=n)


def open_session(port: int, timeout: float = 5.0, **options) -> SmtpSession:
    config = ProviderConfig("p", "127.0.0.1", port, timeout_seconds=timeout)
    session = SmtpSession(config, **options)
    session.open()
    return session


def kinds(outcomes) -> list[str]:
    return [o.kind.value if isinstance(o, SendError) else "sent" for _, o in outcomes]


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def server(request):
    with FaultSMTPServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def session(server):
    session = open_session(server.port)
    yield session
    session.close()


@integration
def test_the_session_pipelines_exactly_when_the_server_advertises_it(server, session):
    assert session.pipelining is server.pipelining
    no_client_pipelining = open_session(server.port, pipelining=False)
    assert not no_client_pipelining.pipelining
    no_client_pipelining.close()


@integration
def test_a_refused_recipient_is_a_bounce_nothing_is_stored_and_the_session_goes_on(server, session):
    server.set_rules([Rule("RCPT", 550, match="gone@")])

    outcomes = list(session.send_many([envelope(1, "gone@example.org"), envelope(2)]))

    assert kinds(outcomes) == ["permanent_recipient", "sent"]
    assert outcomes[0][1].smtp_code == 550 and outcomes[0][1].enhanced == "5.1.1"
    assert [m.rcpt_tos for m in server.messages] == [["user2@example.org"]]
    assert server.connections == 1 and session.usable


@integration
def test_a_refused_sender_is_classified_by_the_mail_reply_not_the_503s_behind_it(server, session):
    server.set_rules([Rule("MAIL", 550, "5.7.1 Sender not allowed", times=1)])

    outcomes = list(session.send_many([envelope(1), envelope(2)]))

    error = outcomes[0][1]
    assert error.kind is FailureKind.PROVIDER_FAULT
    assert (error.smtp_code, error.enhanced) == (550, "5.7.1")
    assert "mail" in error.message and "503" not in error.message
    assert kinds(outcomes)[1] == "sent"
    assert [m.rcpt_tos for m in server.messages] == [["user2@example.org"]]


@integration
def test_a_4xx_after_the_data_is_transient_and_the_next_message_goes_through(server, session):
    server.set_rules([Rule("DATA", 451, match="message 2", times=1)])

    outcomes = list(session.send_many([envelope(1), envelope(2), envelope(3)]))

    assert kinds(outcomes) == ["sent", "transient", "sent"]
    assert outcomes[1][1].smtp_code == 451
    assert [m.message()["Subject"] for m in server.messages] == ["message 1", "message 3"]
    assert server.connections == 1


@integration
def test_a_hang_up_mid_pipeline_is_transient_and_breaks_the_session(server, session):
    server.set_rules([Rule("RCPT", 0)])

    outcomes = list(session.send_many([envelope(1), envelope(2)]))

    # The iterator ends with the session: the second envelope is never taken.
    assert [(e.key, k) for (e, _), k in zip(outcomes, kinds(outcomes), strict=True)] == [
        (1, "transient")
    ]
    assert session.broken and server.messages == []


@integration
def test_a_stream_of_messages_is_delivered_in_order_on_one_connection(server, session):
    outcomes = list(session.send_many(envelope(n) for n in range(10)))

    assert [e.key for e, _ in outcomes] == list(range(10))
    assert all(isinstance(o, Delivered) and o.queue_id for _, o in outcomes)
    assert [m.message()["Subject"] for m in server.messages] == [f"message {n}" for n in range(10)]
    assert server.messages_per_connection == {1: 10}
    assert session.sent_count == 10


@integration
def test_a_drop_after_a_chained_dot_leaves_that_one_unknown_and_the_next_not_sent(caplog):
    # The server stores nothing and hangs up instead of answering message 2's final dot, while
    # message 3's MAIL, RCPT and DATA are already on the wire behind it.
    with FaultSMTPServer(rules=[Rule("DATA", 0, match="message 2")]) as server:
        session = open_session(server.port)
        outcomes = list(session.send_many(envelope(n) for n in range(1, 6)))

    assert [(e.key, k) for (e, _), k in zip(outcomes, kinds(outcomes), strict=True)] == [
        (1, "sent"),
        (2, "unknown_outcome"),
        (3, "not_sent"),
    ]
    assert [m.message()["Subject"] for m in server.messages] == ["message 1"]
    assert session.broken
    [logged] = [r.getMessage() for r in caplog.records if "possible_duplicate" in r.getMessage()]
    assert "provider=p key=2 " in logged


@integration
def test_envelopes_are_taken_only_when_they_are_about_to_be_written():
    taken: list[int] = []
    seen_when_taken: list[int] = []
    settled: list[int] = []

    def feed():
        for n in range(6):
            taken.append(n)
            seen_when_taken.append(len(settled))
            yield envelope(n)

    with FaultSMTPServer() as server:
        session = open_session(server.port)
        for env, _ in session.send_many(feed()):
            settled.append(env.key)
            if env.key == 2:
                break  # the caller stops reading: the session must not be reused

    # Envelope n is taken once n-1 is ready for its data, so at most two are ever unsettled.
    assert all(n - seen <= 2 for n, seen in zip(taken, seen_when_taken, strict=True))
    assert taken == [0, 1, 2, 3] and settled == [0, 1, 2]
    assert session.broken  # abandoned with envelope 3's commands in flight


@integration
def test_a_caller_that_stops_feeding_ends_the_stream_with_the_session_usable(server, session):
    outcomes = list(session.send_many(iter([envelope(1), envelope(2)])))

    assert kinds(outcomes) == ["sent", "sent"]
    assert session.usable and session.noop_ok()
    session.send(SENDER, "late@example.org", message(3))
    assert len(server.messages) == 3


@integration
def test_an_unsendable_address_is_bad_data_and_the_others_go_on(server, session):
    batch = [envelope(1), envelope(2, "Eve <eve@example.org>"), envelope(3)]

    outcomes = list(session.send_many(batch))

    assert sorted(e.key for e, _ in outcomes) == [1, 2, 3]
    assert dict(zip([e.key for e, _ in outcomes], kinds(outcomes), strict=True)) == {
        1: "sent",
        2: "bad_data",
        3: "sent",
    }
    assert len(server.messages) == 2


@pytest.mark.parametrize("pipelining", [True, False])
@integration
def test_the_data_goes_exactly_as_smtplib_sends_it(pipelining):
    tricky = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nbare\nlf\r\n.\r\nno final crlf"
    with FaultSMTPServer(pipelining=pipelining) as server:
        session = open_session(server.port)
        session.send(SENDER, "a@example.org", tricky)
        session.close()
        with smtplib.SMTP("127.0.0.1", server.port) as plain:
            plain.sendmail(SENDER, ["a@example.org"], tricky)

    ours, smtplibs = server.messages
    assert ours.data == smtplibs.data
    assert b"\n.leading dot" in ours.data


@integration
def test_a_refused_recipient_followed_by_354_gets_a_lone_dot_then_rset():
    replies = {"RCPT": "550 5.1.1 no such user", "DATA": "354 go ahead", "DOT": "250 2.0.0 Ok"}
    with ScriptedSMTPServer(replies) as server:
        session = open_session(server.port)
        with pytest.raises(SendError) as caught:
            session.send(SENDER, "gone@example.org", message(1))
        assert session.usable
        session.close()

    assert caught.value.kind is FailureKind.PERMANENT_RECIPIENT
    assert session.sent_count == 0  # the 250 after the lone dot is not a delivery
    assert server.commands()[1:] == ["MAIL", "RCPT", "DATA", ".", "RSET", "QUIT"]


@pytest.mark.parametrize(
    ("dribbled", "kind"),
    [("MAIL", FailureKind.TRANSIENT), ("DOT", FailureKind.UNKNOWN_OUTCOME)],
)
@pytest.mark.parametrize("pipelining", [True, False])
@integration
def test_a_server_that_dribbles_a_reply_forever_is_cut_off_at_the_deadline(
    dribbled, kind, pipelining
):
    with ScriptedSMTPServer({dribbled: DRIBBLE}, pipelining=pipelining) as server:
        # Each byte comes well within the per-call timeout, so only the deadline can end it.
        session = open_session(server.port, timeout=5.0)
        started = time.monotonic()
        with pytest.raises(SendError) as caught:
            session.send(SENDER, "a@example.org", message(1), deadline=started + 1.0)
        elapsed = time.monotonic() - started

    assert caught.value.kind is kind
    assert "deadline" in caught.value.message
    assert 0.9 <= elapsed < 3.0
    assert session.broken


@integration
def test_without_a_deadline_the_providers_timeout_bounds_the_whole_transaction():
    with ScriptedSMTPServer({"RCPT": DRIBBLE}) as server:
        session = open_session(server.port, timeout=0.8)
        started = time.monotonic()
        with pytest.raises(SendError) as caught:
            session.send(SENDER, "a@example.org", message(1))

    assert caught.value.kind is FailureKind.TRANSIENT
    assert time.monotonic() - started < 2.5


@integration
def test_a_huge_queue_id_and_reply_are_cut_to_their_columns(server, session):
    text = "2.0.0 Ok: queued as " + "Q" * 600 + " " + "x" * 600
    server.set_rules([Rule("DATA", 250, text)])

    delivered = session.send(SENDER, "a@example.org", message(1))

    assert delivered.queue_id == "Q" * QUEUE_ID_MAX
    assert len(delivered.reply) == REPLY_MAX and delivered.reply.startswith("2.0.0 Ok")


def test_reply_text_drops_what_a_column_cannot_hold():
    assert reply_text(b"250 ok\x00 \xff\r") == "250 ok\ufffd \ufffd\ufffd"
    assert reply_text(b"line one\nline\ttwo") == "line one\nline\ttwo"
    assert reply_text(None) == ""


@integration
def test_a_greeting_dribbled_forever_cannot_hold_the_opening_of_a_session():
    with ScriptedSMTPServer({"CONNECT": DRIBBLE}) as server:
        session = SmtpSession(ProviderConfig("p", "127.0.0.1", server.port, timeout_seconds=0.8))
        started = time.monotonic()
        with pytest.raises(SendError) as caught:
            session.open()

    assert caught.value.kind is FailureKind.TRANSIENT
    assert time.monotonic() - started < 2.5
    assert session.broken


@integration
def test_an_idle_session_outlives_the_deadline_of_its_last_transaction(server):
    session = open_session(server.port, timeout=0.4)
    stream = session.send_many([envelope(1)])
    [(_, first)] = [next(stream)]  # the caller holds the iterator after its last outcome

    time.sleep(0.8)  # past the transaction's deadline, with nothing in flight

    assert isinstance(first, Delivered)
    assert session.noop_ok()
    session.send(SENDER, "late@example.org", message(2))
    assert len(server.messages) == 2
    stream.close()
    assert session.usable
    session.close()


@integration
def test_a_send_while_an_abandoned_stream_has_commands_in_flight_drops_the_session():
    with FaultSMTPServer() as server:
        session = open_session(server.port)
        stream = session.send_many(envelope(n) for n in range(3))
        first_key, first = next(stream)  # envelope 1's commands are on the wire behind it
        with pytest.raises(SendError) as caught:
            session.send(SENDER, "other@example.org", message(9))
        stream.close()

    assert (first_key.key, isinstance(first, Delivered)) == (0, True)
    assert caught.value.kind is FailureKind.TRANSIENT
    assert session.broken
    assert [m.message()["Subject"] for m in server.messages] == ["message 0"]


@integration
def test_abandoning_a_stream_after_a_refused_chained_message_drops_the_session():
    with FaultSMTPServer(rules=[Rule("DATA", 451, match="message 0")]) as server:
        session = open_session(server.port)
        stream = session.send_many(envelope(n) for n in range(3))
        _, first = next(stream)  # refused after its dot, envelope 1's commands behind it
        stream.close()

    assert first.kind is FailureKind.TRANSIENT and first.smtp_code == 451
    assert session.broken  # its replies were never read: the session cannot be reused


@pytest.mark.parametrize(
    "payload",
    [
        b"plain\r\n",
        b"no final line end",
        b".starts with a dot\r\n..two\r\n.\r\n",
        b"bare\nline\nends\n.dot after bare lf",
        "a str\nwith bare\rends\r\n.dot",
    ],
)
def test_the_data_block_is_what_smtplib_data_writes(payload):
    # smtplib.data(): str gets CRLF line ends and ASCII; then leading dots doubled, a final CRLF
    # if missing, and the lone dot.
    expected = payload
    if isinstance(expected, str):
        expected = smtplib._fix_eols(expected).encode("ascii")
    expected = smtplib._quote_periods(expected)
    if expected[-2:] != b"\r\n":
        expected += b"\r\n"

    assert data_block(payload) == expected + b".\r\n"
