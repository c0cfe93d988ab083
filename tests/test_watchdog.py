"""The deadline watchdog ends a blocked read by shutting its socket down, and only then."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import time

from massmailer.delivery.providers.watchdog import Watchdog, watchdog


def blocked_read_seconds(dog: Watchdog, deadline_in: float, *, unwatch: bool = False) -> float:
    """How long a recv() on a silent socket blocks when watched (the socket times out at 3 s)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(3.0)
        owner = object()
        started = time.monotonic()
        dog.watch(owner, ours, started + deadline_in)
        if unwatch:
            dog.unwatch(owner)
        with contextlib.suppress(TimeoutError):  # the unwatched case
            ours.recv(1)
        return time.monotonic() - started


def test_a_read_past_its_deadline_ends_at_the_deadline():
    dog = Watchdog()

    elapsed = blocked_read_seconds(dog, 0.3)

    assert 0.29 <= elapsed < 1.5
    assert dog.fired == 1


def test_an_unwatched_socket_is_left_alone():
    dog = Watchdog()

    elapsed = blocked_read_seconds(dog, 0.2, unwatch=True)

    assert elapsed >= 2.9 and dog.fired == 0


def test_re_arming_moves_the_deadline():
    dog = Watchdog()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        owner = object()
        dog.watch(owner, ours, time.monotonic() + 0.2)
        dog.watch(owner, ours, time.monotonic() + 30)  # a later one replaces it
        time.sleep(0.5)
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"
        dog.unwatch(owner)
    assert dog.fired == 0


def _child_read(queue) -> None:
    queue.put(blocked_read_seconds(watchdog(), 0.2))


def test_a_forked_child_gets_a_working_watchdog_of_its_own():
    owner = object()
    with socket.socket() as unused:
        watchdog().watch(owner, unused, time.monotonic() + 60)  # start the parent's thread
        watchdog().unwatch(owner)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_read, args=(queue,))
    child.start()
    elapsed = queue.get(timeout=10)
    child.join(timeout=10)

    assert child.exitcode == 0
    assert elapsed < 1.5
