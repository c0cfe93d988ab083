"""A provider name must fit the columns it is stored in (issue 10, finding 3)."""

from __future__ import annotations

import json

import pytest

from massmailer.config import ConfigError, load_settings
from massmailer.delivery.providers.base import PROVIDER_NAME_MAX


def providers(name: str) -> dict[str, str]:
    entry = {"name": name, "host": "smtp.example.com", "port": 25}
    return {"MASSMAILER_PROVIDERS": json.dumps([entry])}


def test_a_provider_name_longer_than_its_column_stops_start_up_naming_it():
    name = "p" * (PROVIDER_NAME_MAX + 1)

    with pytest.raises(ConfigError, match=rf"\[0\] \({name}\): 'name' must be at most 50"):
        load_settings(providers(name), require_services=False)


def test_a_provider_name_that_fits_is_kept():
    name = "p" * PROVIDER_NAME_MAX

    [provider] = load_settings(providers(name), require_services=False).providers

    assert provider.name == name
