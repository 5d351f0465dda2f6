"""HEALTHGATE_PROVIDERS: a provider's sender named by import path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.provider import NullProvider
from policies.errors import HealthgateError
from scheduler.providers import Providers
from scheduler.settings import Settings


def test_a_named_sender_replaces_the_built_in_one(tmp_path: Path) -> None:
    # Given settings that name a sender for the log provider
    settings = Settings(data_dir=tmp_path, providers={"log": "bench.provider:NullProvider"})

    # When the log provider is asked for
    sender = Providers(settings).get("log")

    # Then it is the named one, built from the settings
    assert isinstance(sender, NullProvider)


def test_a_path_that_imports_nothing_is_an_error_naming_it(tmp_path: Path) -> None:
    # Given settings that name a sender which does not exist
    settings = Settings(data_dir=tmp_path, providers={"log": "bench.provider:Missing"})

    # When / Then asking for the provider names the path
    with pytest.raises(HealthgateError, match=r"bench\.provider:Missing"):
        Providers(settings).get("log")


def test_the_setting_is_read_from_the_environment_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given HEALTHGATE_PROVIDERS in the environment
    monkeypatch.setenv("HEALTHGATE_PROVIDERS", '{"log": "bench.provider:NullProvider"}')

    # When settings are read / Then the mapping is there
    assert Settings(data_dir=tmp_path).providers == {"log": "bench.provider:NullProvider"}
