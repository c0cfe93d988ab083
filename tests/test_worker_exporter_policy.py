"""A worker host's /metrics follows the web's rule: closed without a token unless public."""

from __future__ import annotations

import pytest

from massmailer.config import OpsSettings
from massmailer.worker import exporter_allowed


@pytest.mark.parametrize(
    ("token", "public", "allowed"),
    [(None, False, False), ("s3cret", False, True), (None, True, True), ("s3cret", True, True)],
)
def test_the_worker_exporter_needs_a_token_or_an_explicit_public_flag(token, public, allowed):
    ops = OpsSettings(metrics_token=token, metrics_public=public, worker_metrics_port=9100)
    assert exporter_allowed(ops) is allowed
