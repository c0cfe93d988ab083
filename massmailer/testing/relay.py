"""A TCP relay on loopback that makes a local server look distant: a model of a real network.

Every byte is delayed by half the round trip in each direction, in order, as a stream: a client
that writes three commands at once sees three replies one round trip later, as over a real
network, while a server that sleeps before each reply would make them cost three round trips.
Put it in front of Postfix's `smtp-sink` or a FaultSMTPServer to measure what pipelining buys.

One asyncio loop in a background thread serves every connection (protocols and timers, no task
per connection), so hundreds of concurrent sessions cost little. Data read is queued with the
time it is due and written when due; a side whose peer cannot keep up stops being read.
Run `python -m massmailer.testing.relay --help` for the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType

logger = logging.getLogger(__name__)

_EOF = b""  # queued in place of data: the sender half-closed its side


class _Direction:
    """Bytes read from one side, written to the other `delay` seconds later, in order."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, on_end: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._delay = delay
        self._on_end = on_end
        self._queue: deque[tuple[float, bytes]] = deque()
        self._sink: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.ended = False  # the EOF went through

    def push(self, data: bytes) -> None:
        self._queue.append((self._loop.time() + self._delay, data))
        self._schedule()

    def attach(self, sink: asyncio.Transport) -> None:
        """Start writing to `sink` (what arrived before it connected waits until now)."""
        self._sink = sink
        self._schedule()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()

    def _schedule(self) -> None:
        if self._timer is None and self._queue and self._sink is not None:
            self._timer = self._loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        sink = self._sink
        assert sink is not None
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now:
            _, data = self._queue.popleft()
            if sink.is_closing():
                self._queue.clear()
                return
            if data:
                sink.write(data)
            else:
                self.ended = True
                self._end(sink)
                self._on_end()
        self._schedule()

    @staticmethod
    def _end(sink: asyncio.Transport) -> None:
        """Pass the half-close on; a peer that is already gone gets closed instead."""
        try:
            if sink.can_write_eof():
                sink.write_eof()
                return
        except OSError:
            pass  # ENOTCONN: the peer reset meanwhile
        sink.close()


class _Side(asyncio.Protocol):
    """One end of a relayed connection: the client's, or the server's."""

    def __init__(self, pair: _Pair, outgoing: _Direction) -> None:
        self._pair = pair
        self._outgoing = outgoing  # what this side reads goes this way
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._outgoing.push(data)

    def eof_received(self) -> bool:
        self._outgoing.push(_EOF)
        return True  # keep our sending half open until the other side is done too

    def connection_lost(self, exc: Exception | None) -> None:
        # The peer learns of it half a round trip later, as over a network.
        self._outgoing.push(_EOF)
        self._pair.lost(self)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Pair:
    """A client connection and the relay's connection to the target, joined by two directions."""

    def __init__(self, relay: LatencyRelay, loop: asyncio.AbstractEventLoop) -> None:
        half = relay.rtt_seconds / 2
        self._loop = loop
        self._up = _Direction(loop, half, self.maybe_done)  # client -> server
        self._down = _Direction(loop, half, self.maybe_done)  # server -> client
        self.client: _Side = _ClientSide(self, self._up)
        self.server = _Side(self, self._down)
        self.client.peer, self.server.peer = self.server, self.client
        self._relay = relay
        self._closed = False

    def client_connected(self) -> None:
        assert self.client.transport is not None
        self._down.attach(self.client.transport)
        self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self._loop.create_connection(
                lambda: self.server, self._relay.target_host, self._relay.target_port
            )
        except OSError as exc:
            logger.warning("relay: cannot reach the target: %s", exc)
            self.close()
            return
        assert self.server.transport is not None
        self._up.attach(self.server.transport)

    def maybe_done(self) -> None:
        """Close both sides once each has half-closed and the other has been told."""
        if self._up.ended and self._down.ended:
            self.close()

    def lost(self, side: _Side) -> None:
        # Close the other side once what was in flight toward it has been written (it was due
        # no later than half a round trip from now; close() still flushes what is buffered).
        self._loop.call_later(self._relay.rtt_seconds / 2 + 0.001, self.close)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._relay.forget(self)
        self._up.cancel()
        self._down.cancel()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.close()


class _ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._pair.client_connected()


class LatencyRelay:
    """Relay loopback connections to a target, each byte delayed by half of `rtt_ms` each way."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        rtt_ms: float,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must not be negative, not {rtt_ms}")
        self.target_host = target_host
        self.target_port = target_port
        self.rtt_seconds = rtt_ms / 1000
        self.host = host
        self.connections = 0  # accepted so far
        self._pairs: set[_Pair] = set()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        """The listening port (the OS's choice once started with port 0)."""
        return self._port

    def start(self) -> LatencyRelay:
        """Listen and relay in a background thread until stop()."""
        if self._thread is not None:
            raise RuntimeError("LatencyRelay already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(self._listen(loop))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="latency-relay", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractServer:
        server = await loop.create_server(self._accept, self.host, self._port, backlog=1024)
        self._port = server.sockets[0].getsockname()[1]
        return server

    @property
    def open_connections(self) -> int:
        """Client connections being relayed now."""
        return len(self._pairs)

    def forget(self, pair: _Pair) -> None:
        self._pairs.discard(pair)

    def _accept(self) -> _Side:
        self.connections += 1
        assert self._loop is not None
        pair = _Pair(self, self._loop)
        self._pairs.add(pair)
        return pair.client

    def stop(self) -> None:
        """Stop listening, close every relayed connection and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                pair.close()
            await asyncio.sleep(0)  # let the transports report their closing
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shut()))
        thread.join(timeout=5)
        self._loop = self._thread = None

    def __enter__(self) -> LatencyRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Relay until SIGTERM or SIGINT; print `listening HOST:PORT` once ready."""
    parser = argparse.ArgumentParser(
        prog="python -m massmailer.testing.relay",
        description="Delay every byte to and from a TCP server by half a round trip each way.",
    )
    parser.add_argument("target", help="HOST:PORT of the server to put at a distance")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip to add")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS choose")
    args = parser.parse_args(argv)
    target_host, _, target_port = args.target.rpartition(":")
    if not target_host or not target_port.isdigit():
        parser.error(f"target must be HOST:PORT, not {args.target!r}")
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    relay = LatencyRelay(target_host, int(target_port), args.rtt_ms, host=args.host, port=args.port)
    with relay:
        print(f"listening {relay.host}:{relay.port}", flush=True)
        stopping.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
