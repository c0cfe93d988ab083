"""choose_provider: weighted choice among available providers, avoiding the one that just failed."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.selection import choose_provider


def provider(name: str, weight: int = 1) -> ProviderConfig:
    return ProviderConfig(name=name, host="127.0.0.1", port=2525, weight=weight)


A, B, C = provider("a"), provider("b"), provider("c")
DRAINED = provider("drained", weight=0)


@pytest.mark.parametrize(
    ("candidates", "exclude", "available", "expected"),
    [
        pytest.param([A], set(), {"a"}, {"a"}, id="the only available provider"),
        pytest.param([A, B], set(), {"b"}, {"b"}, id="skips the unavailable"),
        pytest.param([A, B], {"a"}, {"a", "b"}, {"b"}, id="avoids the excluded"),
        pytest.param([A, B], {"a"}, {"a"}, {"a"}, id="falls back to the excluded over waiting"),
        pytest.param([A, B, C], {"a"}, {"a", "c"}, {"c"}, id="prefers any non-excluded"),
        pytest.param([A, B], set(), set(), {None}, id="none available"),
        pytest.param([A, B], {"a", "b"}, set(), {None}, id="none available, all excluded"),
        pytest.param([], set(), set(), {None}, id="no candidates"),
        pytest.param([A, DRAINED], set(), {"a", "drained"}, {"a"}, id="weight 0 is drained"),
        pytest.param([DRAINED], set(), {"drained"}, {None}, id="drained even when alone"),
        pytest.param([A, B], set(), {"a", "b"}, {"a", "b"}, id="either when both available"),
    ],
)
def test_choose_provider_table(candidates, exclude, available, expected):
    rng = random.Random(7)
    for _ in range(50):
        chosen = choose_provider(candidates, exclude=exclude, available=available, rng=rng)
        assert (chosen.name if chosen else None) in expected


def test_available_may_be_a_predicate():
    only_b = lambda name: name == "b"  # noqa: E731
    assert choose_provider([A, B], exclude=(), available=only_b, rng=random.Random(1)) == B


def test_predicate_is_asked_lazily_and_stops_at_the_first_yes():
    asked: list[str] = []

    def acquire(name: str) -> bool:
        asked.append(name)
        return True

    chosen = choose_provider([A, B, C], exclude=(), available=acquire, rng=random.Random(3))
    assert asked == [chosen.name]


def test_predicate_asked_at_most_once_per_candidate_excluded_last():
    asked: list[str] = []

    def refuse(name: str) -> bool:
        asked.append(name)
        return False

    assert choose_provider([A, B, C], exclude={"a"}, available=refuse, rng=random.Random(5)) is None
    assert sorted(asked[:2]) == ["b", "c"]
    assert asked[2:] == ["a"]


def test_weights_set_the_share_of_sends():
    candidates = [provider("light", 1), provider("middle", 2), provider("heavy", 7)]
    rng = random.Random(20240501)
    draws = 20_000
    names = {"light", "middle", "heavy"}
    counts = Counter(
        choose_provider(candidates, exclude=(), available=names, rng=rng).name for _ in range(draws)
    )
    for name, share in {"light": 0.1, "middle": 0.2, "heavy": 0.7}.items():
        assert counts[name] / draws == pytest.approx(share, abs=0.015)


def test_weights_hold_among_the_available_when_one_is_refused():
    candidates = [provider("light", 1), provider("heavy", 3), provider("down", 50)]
    rng = random.Random(99)
    draws = 20_000
    counts = Counter(
        choose_provider(candidates, exclude=(), available=lambda n: n != "down", rng=rng).name
        for _ in range(draws)
    )
    assert counts["down"] == 0
    assert counts["heavy"] / draws == pytest.approx(0.75, abs=0.015)
