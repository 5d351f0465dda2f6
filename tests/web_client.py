"""The web app as the tests reach it: a loopback Host and, for reads, the API token."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from scheduler.settings import Settings
from tests.linq_events import SECRET

#: The API token of the tests' web apps.
TOKEN = "test-api-token-7f3c9a1e"
#: A Host the default HEALTHGATE_ALLOWED_HOSTS answers (TestClient's own is "testserver").
BASE_URL = "http://localhost"


def web_settings(settings: Settings, **update: Any) -> Settings:
    """The settings with the test webhook secret and API token."""
    return settings.model_copy(
        update={"linq_webhook_secret": SecretStr(SECRET), "api_token": SecretStr(TOKEN)} | update
    )


def reader(app: FastAPI, **options: Any) -> TestClient:
    """A client that sends the API token with every request."""
    return TestClient(
        app, base_url=BASE_URL, headers={"Authorization": f"Bearer {TOKEN}"}, **options
    )
