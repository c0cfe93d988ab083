"""Pure rules of a sender thread: how far ahead it may reserve, how late is a stall."""

from __future__ import annotations

import pytest

from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.sending import late_slot_tolerance, reservation_horizon


@pytest.mark.parametrize(("priority", "horizon"), [(0, 1.0), (4, 2.0), (9, 3.25), (-1, 1.0)])
def test_urgent_mail_may_reserve_further_ahead(priority, horizon):
    assert reservation_horizon(priority) == pytest.approx(horizon)


@pytest.mark.parametrize(
    ("rate", "tolerance"),
    [
        (None, float("inf")),  # no schedule to bunch against
        (5, 0.1),  # a slow schedule: at most 0.1 s late
        (20, 0.05),  # one slot's spacing
        (25, 0.04),
        (100_000, 0.04),  # never below ordinary wake-up jitter, or every sleeper is "late"
    ],
)
def test_a_send_is_late_after_about_one_slot_but_never_after_mere_jitter(rate, tolerance):
    provider = ProviderConfig("p", "h", 25, rate_per_second=rate)
    assert late_slot_tolerance(provider) == pytest.approx(tolerance)
