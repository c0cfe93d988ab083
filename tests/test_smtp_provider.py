"""SmtpSession against a real SMTP server on loopback: envelopes, failure classes, TLS, secrets."""

from __future__ import annotations

import base64
import socket

import pytest

from massmailer.delivery.providers.base import FailureKind, ProviderConfig, SendError, TlsMode
from massmailer.delivery.providers.smtp import SmtpSession, parse_queue_id
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from massmailer.testing.tls import make_self_signed_cert, server_tls_context

integration = pytest.mark.integration

SENDER = "bounces+42@mailer.example.com"
RCPT = "alice@example.org"
MESSAGE = b"From: news@example.com\r\nTo: alice@example.org\r\nSubject: Hi\r\n\r\nHello.\r\n"
PASSWORD = "s3cr3t-Pa55word"


def config_for(server: FaultSMTPServer, **overrides) -> ProviderConfig:
    options = {"timeout_seconds": 5.0, **overrides}
    return ProviderConfig("relay", "127.0.0.1", server.port, **options)


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def server(request):
    # Every case runs against a server that advertises PIPELINING and one that does not.
    with FaultSMTPServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def session(server):
    session = SmtpSession(config_for(server))
    session.open()
    yield session
    session.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


def send_error(session: SmtpSession, rcpt: str = RCPT) -> SendError:
    with pytest.raises(SendError) as caught:
        session.send(SENDER, rcpt, MESSAGE)
    return caught.value


def open_error(config: ProviderConfig) -> SendError:
    session = SmtpSession(config)
    with pytest.raises(SendError) as caught:
        session.open()
    assert session.broken
    return caught.value


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "queue_id"),
    [
        ("2.0.0 Ok: queued as 4F2A1B", "4F2A1B"),
        ("Ok: queued as 3pG8eMxYS8aG7ONbl2wDKQ", "3pG8eMxYS8aG7ONbl2wDKQ"),
        ("OK id=1abcde-000123-AB", "1abcde-000123-AB"),
        ("2.0.0 x9ABC123 Message accepted for delivery", "x9ABC123"),
        ("2.0.0 <a1b2c3@relay.example> Message accepted", "a1b2c3@relay.example"),
        (
            "Ok 0100018b5a6c7d8e-12345678-1234-1234-1234-123456789abc-000000",
            "0100018b5a6c7d8e-12345678-1234-1234-1234-123456789abc-000000",
        ),
        (
            "2.6.0 <MW4PR1@prod.outlook.com> [InternalId=123] Queued mail for delivery",
            "MW4PR1@prod.outlook.com",
        ),
        ("2.0.0 OK  1712345678 d2-20020a17090a.1 - gsmtp", "d2-20020a17090a.1"),
        ("2.0.0 Ok", None),
        ("OK", None),
        ("Great success", None),
        ("", None),
    ],
)
def test_parse_queue_id_reads_the_common_forms(reply, queue_id):
    assert parse_queue_id(reply) == queue_id


@integration
def test_a_send_stores_the_message_with_its_envelope(server, session):
    delivered = session.send(SENDER, RCPT, MESSAGE)

    [received] = server.messages
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [RCPT])
    assert received.message()["Subject"] == "Hi"
    assert delivered.provider == "relay"
    assert delivered.smtp_code == 250
    assert delivered.reply.startswith("2.0.0 Ok: queued as ")
    assert delivered.queue_id and delivered.reply.endswith(delivered.queue_id)
    assert session.sent_count == 1
    assert session.last_used >= session.opened_at


@integration
def test_unknown_user_is_a_permanent_recipient_failure_and_the_session_stays_usable(
    server, session
):
    server.set_rules([Rule("RCPT", 550, "5.1.1 <alice@example.org>: User unknown")])

    error = send_error(session)

    assert error.kind is FailureKind.PERMANENT_RECIPIENT
    assert (error.smtp_code, error.enhanced) == (550, "5.1.1")
    assert "rcpt" in error.message and "User unknown" in error.message
    server.set_rules([])
    session.send(SENDER, "bob@example.org", MESSAGE)
    assert [m.rcpt_tos for m in server.messages] == [["bob@example.org"]]
    assert server.connections == 1


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
@integration
def test_451_is_transient_and_the_session_stays_usable(server, session, command):
    server.set_rules([Rule(command, 451, times=1)])

    error = send_error(session)

    assert error.kind is FailureKind.TRANSIENT
    assert (error.smtp_code, error.enhanced) == (451, "4.3.0")
    assert session.usable
    session.send(SENDER, RCPT, MESSAGE)
    assert len(server.messages) == 1 and server.connections == 1


@integration
def test_message_too_big_is_bad_data(server, session):
    server.set_rules([Rule("DATA", 552, "5.3.4 Message size exceeds fixed limit")])

    error = send_error(session)

    assert error.kind is FailureKind.BAD_DATA
    assert (error.smtp_code, error.enhanced) == (552, "5.3.4")


@integration
def test_policy_refusal_at_mail_is_a_provider_fault(server, session):
    server.set_rules([Rule("MAIL", 550, "5.7.1 Sender not allowed for this account")])

    error = send_error(session)

    assert error.kind is FailureKind.PROVIDER_FAULT
    assert error.enhanced == "5.7.1"
    assert server.messages == []


@integration
def test_421_breaks_the_session(server, session):
    server.set_rules([Rule("MAIL", 421)])

    error = send_error(session)

    assert error.kind is FailureKind.TRANSIENT and error.smtp_code == 421
    assert session.broken and not session.usable


@integration
def test_hang_up_after_the_final_dot_is_an_unknown_outcome_and_breaks_the_session(server, session):
    # The provider may have stored the message before it hung up: the client cannot tell.
    server.set_rules([Rule("DATA", 0)])

    error = send_error(session)

    assert error.kind is FailureKind.UNKNOWN_OUTCOME
    assert error.smtp_code is None and "data" in error.message
    assert session.broken
    assert server.messages == []


@integration
def test_a_reply_slower_than_the_timeout_is_transient_and_breaks_the_session():
    with FaultSMTPServer() as server:
        session = SmtpSession(config_for(server, timeout_seconds=0.3))
        session.open()
        server.latency_seconds = 1.0

        error = send_error(session)

    assert error.kind is FailureKind.TRANSIENT  # no reply to MAIL: nothing was sent
    assert "timed out" in error.message or "deadline passed" in error.message
    assert session.broken


@integration
def test_a_refused_connection_is_a_provider_fault():
    # A fault of this provider for its circuit breaker; the job retries elsewhere all the same.
    error = open_error(ProviderConfig("gone", "127.0.0.1", closed_port(), timeout_seconds=2))

    assert error.kind is FailureKind.PROVIDER_FAULT
    assert "ConnectionRefusedError" in error.message


@pytest.mark.parametrize(
    ("code", "kind"), [(554, FailureKind.PROVIDER_FAULT), (421, FailureKind.TRANSIENT)]
)
@integration
def test_a_refusing_greeting_is_classified(server, code, kind):
    server.set_rules([Rule("CONNECT", code)])

    error = open_error(config_for(server))

    assert error.kind is kind and error.smtp_code == code
    assert "connect" in error.message


@integration
def test_auth_with_the_right_password_lets_mail_through():
    with FaultSMTPServer(credentials={"mailer": PASSWORD}, auth_require_tls=False) as server:
        session = SmtpSession(config_for(server, username="mailer", password=PASSWORD))
        session.open()
        session.send(SENDER, RCPT, MESSAGE)
        session.close()

        assert len(server.messages) == 1


@integration
def test_535_on_auth_is_a_provider_fault():
    with FaultSMTPServer(
        credentials={"mailer": PASSWORD}, auth_require_tls=False, rules=[Rule("AUTH", 535)]
    ) as server:
        error = open_error(config_for(server, username="mailer", password=PASSWORD))

    assert error.kind is FailureKind.PROVIDER_FAULT
    assert (error.smtp_code, error.enhanced) == (535, "5.7.8")
    assert "auth" in error.message


@integration
def test_a_wrong_password_is_a_provider_fault():
    with FaultSMTPServer(credentials={"mailer": PASSWORD}, auth_require_tls=False) as server:
        error = open_error(config_for(server, username="mailer", password="wrong-" + PASSWORD))

    assert error.kind is FailureKind.PROVIDER_FAULT
    assert error.smtp_code == 535


@integration
def test_auth_without_tls_on_a_server_that_requires_it_is_a_provider_fault():
    with FaultSMTPServer(credentials={"mailer": PASSWORD}, auth_require_tls=True) as server:
        error = open_error(config_for(server, username="mailer", password=PASSWORD))

    assert error.kind is FailureKind.PROVIDER_FAULT


@integration
def test_the_password_never_appears_in_a_send_error():
    as_plain = base64.b64encode(f"\0mailer\0{PASSWORD}".encode()).decode()
    as_login = base64.b64encode(PASSWORD.encode()).decode()
    echoes = f"5.7.8 bad credentials {PASSWORD} / {as_plain} / {as_login}"
    failures = [
        [Rule("AUTH", 535, echoes)],
        [Rule("AUTH", 454, f"4.7.0 try later, {PASSWORD}")],
        [Rule("AUTH", 0)],
        [Rule("MAIL", 530, f"5.7.0 who is {PASSWORD}?")],
    ]
    errors = []
    with FaultSMTPServer(credentials={"mailer": PASSWORD}, auth_require_tls=False) as server:
        for rules in failures:
            server.set_rules(rules)
            config = config_for(server, username="mailer", password=PASSWORD)
            session = SmtpSession(config)
            try:
                session.open()
                session.send(SENDER, RCPT, MESSAGE)
            except SendError as error:
                errors.append(error)
            session.close()

    assert len(errors) == len(failures)
    for error in errors:
        shown = f"{error} {error!r} {error.args} {error.__cause__!r}"
        assert PASSWORD not in shown
        assert as_plain not in shown and as_login not in shown


@integration
def test_starttls_verified_against_the_ca_file_works(cert):
    with FaultSMTPServer(tls_context=server_tls_context(*cert), require_starttls=True) as server:
        session = SmtpSession(config_for(server, tls=TlsMode.STARTTLS, ca_file=cert[0]))
        session.open()
        session.send(SENDER, RCPT, MESSAGE)
        session.close()

        assert len(server.messages) == 1


@integration
def test_implicit_tls_verified_against_the_ca_file_works(cert):
    with FaultSMTPServer(tls_context=server_tls_context(*cert), implicit_tls=True) as server:
        session = SmtpSession(config_for(server, tls=TlsMode.SSL, ca_file=cert[0]))
        session.open()
        session.send(SENDER, RCPT, MESSAGE)
        session.close()

        assert len(server.messages) == 1


@integration
def test_auth_over_starttls_works(cert):
    with FaultSMTPServer(
        tls_context=server_tls_context(*cert), credentials={"mailer": PASSWORD}
    ) as server:
        config = config_for(
            server, tls="starttls", ca_file=cert[0], username="mailer", password=PASSWORD
        )
        session = SmtpSession(config)
        session.open()
        session.send(SENDER, RCPT, MESSAGE)
        session.close()

        assert len(server.messages) == 1


@pytest.mark.parametrize(("tls", "implicit"), [(TlsMode.STARTTLS, False), (TlsMode.SSL, True)])
@integration
def test_an_unverifiable_certificate_is_a_provider_fault(cert, tls, implicit):
    tls_context = server_tls_context(*cert)
    with FaultSMTPServer(tls_context=tls_context, implicit_tls=implicit) as server:
        error = open_error(config_for(server, tls=tls))  # no ca_file: the system CAs refuse it

        assert error.kind is FailureKind.PROVIDER_FAULT
        assert "SSLCertVerificationError" in error.message
        assert server.messages == []


@integration
def test_starttls_on_a_server_without_it_is_a_provider_fault(server):
    error = open_error(config_for(server, tls=TlsMode.STARTTLS))

    assert error.kind is FailureKind.PROVIDER_FAULT
    assert "STARTTLS" in error.message


@integration
def test_a_missing_ca_file_is_a_provider_fault(server, tmp_path):
    error = open_error(config_for(server, tls=TlsMode.STARTTLS, ca_file=str(tmp_path / "none")))

    assert error.kind is FailureKind.PROVIDER_FAULT


@pytest.mark.parametrize(
    "rcpt",
    [
        "alice@example.org\r\nRCPT TO:<eve@example.org>",
        "alice@example.org, eve@example.org",
        "Alice <alice@example.org>",
        "zoë@exämple.org",
    ],
)
@integration
def test_an_address_smtplib_cannot_send_is_bad_data_and_the_session_stays_usable(
    server, session, rcpt
):
    error = send_error(session, rcpt=rcpt)

    assert error.kind is FailureKind.BAD_DATA
    assert session.usable
    session.send(SENDER, RCPT, MESSAGE)
    assert [m.rcpt_tos for m in server.messages] == [[RCPT]]


@integration
def test_noop_ok_tells_a_live_session_from_a_dead_one(server, session):
    assert session.noop_ok()

    server.set_rules([Rule("NOOP", 0)])

    assert not session.noop_ok()
    assert session.broken


@integration
def test_reset_keeps_a_healthy_session_usable(session):
    session.reset()

    assert session.usable
    session.send(SENDER, RCPT, MESSAGE)


@integration
def test_a_session_opens_once(session):
    with pytest.raises(RuntimeError):
        session.open()
    session.close()
    with pytest.raises(RuntimeError):
        session.send(SENDER, RCPT, MESSAGE)
