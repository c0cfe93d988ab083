"""The collector pause around batch requests: off inside, on again after the last one leaves."""

from __future__ import annotations

import gc
import threading

from massmailer.heap import collection_paused


def test_the_collector_is_off_inside_and_on_again_after():
    assert gc.isenabled()

    with collection_paused():
        inside = gc.isenabled()

    assert (inside, gc.isenabled()) == (False, True)


def test_overlapping_pauses_turn_it_on_only_after_the_last_one():
    first_in, release = threading.Event(), threading.Event()
    seen = {}

    def first():
        with collection_paused():
            first_in.set()
            release.wait(5)
            seen["first, while the second has left"] = gc.isenabled()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with collection_paused():
        pass
    seen["second left, first still inside"] = gc.isenabled()
    release.set()
    thread.join(5)

    assert seen == {
        "second left, first still inside": False,
        "first, while the second has left": False,
    }
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_error_inside_still_turns_it_on_again():
    try:
        with collection_paused():
            raise ValueError("refused")
    except ValueError:
        pass

    assert gc.isenabled()
