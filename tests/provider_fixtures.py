"""Fixtures for tests that talk to the providers' fake HTTP side (see tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from freezegun.api import FrozenDateTimeFactory

from scheduler.client import Healthgate
from scheduler.settings import Settings
from tests.fakes import FakeProvider, d360_ok, fake_client, linq_ok


@pytest.fixture
def linq() -> FakeProvider:
    """Linq's side, answering every request as a healthy account would."""
    return FakeProvider(linq_ok)


@pytest.fixture
def d360() -> FakeProvider:
    """360dialog's side, answering every request as a healthy number would."""
    return FakeProvider(d360_ok)


@pytest.fixture
def provider_client(
    settings: Settings, clock: FrozenDateTimeFactory, linq: FakeProvider, d360: FakeProvider
) -> Iterator[Healthgate]:
    """A client whose Linq and 360dialog providers reach the fakes above."""
    client = fake_client(settings, linq, d360)
    yield client
    client.close()
