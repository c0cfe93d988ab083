"""LatencyRelay: each byte delayed half a round trip each way, in order, many connections."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from massmailer.testing.relay import LatencyRelay
from tests.infra import ROOT

integration = pytest.mark.integration


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    request_queue_size = 1024  # the default 5 drops the SYNs of a burst of connections
    daemon_threads = True


@pytest.fixture(scope="module")
def echo():
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def relayed(port: int, rtt_ms: float):
    """A relay in front of `port` and one client connection through it."""
    with (
        LatencyRelay("127.0.0.1", port, rtt_ms=rtt_ms) as relay,
        socket.create_connection(("127.0.0.1", relay.port)) as sock,
    ):
        yield relay, sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 65536))
        assert chunk, "connection closed early"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


@integration
def test_a_reply_comes_back_after_one_round_trip(echo):
    with relayed(echo, 100) as (_, sock):
        sock.sendall(b"warm-up")  # the relay connects to the target on accept
        read_exactly(sock, 7)
        started = time.monotonic()
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        elapsed = time.monotonic() - started

    assert 0.098 <= elapsed < 0.25


@integration
def test_writes_in_flight_overlap_like_pipelined_commands(echo):
    with relayed(echo, 100) as (_, sock):
        sock.sendall(b"x")
        read_exactly(sock, 1)
        started = time.monotonic()
        for line in (b"MAIL\r\n", b"RCPT\r\n", b"DATA\r\n"):
            sock.sendall(line)
            time.sleep(0.01)
        assert read_exactly(sock, 18) == b"MAIL\r\nRCPT\r\nDATA\r\n"
        elapsed = time.monotonic() - started

    # Three writes 10 ms apart: one round trip plus the spacing, not three round trips.
    assert 0.1 <= elapsed < 0.25


@integration
def test_a_large_stream_arrives_whole_and_in_order(echo):
    payload = os.urandom(2_000_000)
    with relayed(echo, 20) as (_, sock):
        writer = threading.Thread(target=sock.sendall, args=(payload,))
        writer.start()
        received = read_exactly(sock, len(payload))
        writer.join()

    assert received == payload


@integration
def test_hundreds_of_concurrent_connections_each_get_their_own_bytes(echo):
    count = 300
    with LatencyRelay("127.0.0.1", echo, rtt_ms=50) as relay:
        socks = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(count)]
        started = time.monotonic()
        for index, sock in enumerate(socks):
            sock.sendall(f"{index:05d}".encode())
        answers = [read_exactly(sock, 5) for sock in socks]
        elapsed = time.monotonic() - started
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 5
        while relay.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay.open_connections == 0
        assert relay.connections == count

    assert answers == [f"{index:05d}".encode() for index in range(count)]
    assert elapsed < 3.0


@integration
def test_a_server_that_closes_is_seen_to_close_half_a_round_trip_later():
    listener = socket.create_server(("127.0.0.1", 0))
    with relayed(listener.getsockname()[1], 200) as (_, sock):
        conn, _ = listener.accept()
        conn.sendall(b"bye")
        closed_at = time.monotonic()
        conn.close()
        assert read_exactly(sock, 3) == b"bye"
        assert sock.recv(1) == b""
        elapsed = time.monotonic() - closed_at
    listener.close()

    assert 0.09 <= elapsed < 0.3


@integration
def test_command_line_relays_until_sigterm(echo):
    process = subprocess.Popen(
        [sys.executable, "-m", "massmailer.testing.relay", f"127.0.0.1:{echo}", "--rtt-ms", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"hello")
            assert read_exactly(sock, 5) == b"hello"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
