"""Send providers behind one interface, built from settings when first needed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from policies.config import Policy
from policies.errors import HealthgateError
from scheduler.providers.base import Outbound, Provider, SendFailed, Sent
from scheduler.providers.log import LogProvider
from scheduler.settings import Settings

__all__ = ["Outbound", "Provider", "Providers", "SendFailed", "Sent"]


class Providers:
    """One client per provider name, per process, created on first use."""

    def __init__(
        self,
        settings: Settings,
        overrides: dict[str, Provider] | None = None,
        policy: Callable[[], Policy] | None = None,
    ) -> None:
        self.settings = settings
        #: The current policy, for what lives per line in it (360dialog key variables).
        self.policy = policy
        self._clients: dict[str, Provider] = dict(overrides or {})

    def get(self, name: str) -> Provider:
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self._build(name)
        return client

    def _build(self, name: str) -> Provider:
        if name in self.settings.providers:
            return _imported(self.settings.providers[name], self.settings)
        if name == "log":
            return LogProvider(self.settings.send_log_path)
        if name == "linq":
            from scheduler.providers.linq import LinqProvider

            if self.settings.linq_api_key is None:
                raise HealthgateError("provider 'linq' needs HEALTHGATE_LINQ_API_KEY to be set")
            return LinqProvider(
                self.settings.linq_api_key.get_secret_value(), self.settings.linq_base_url
            )
        if name == "360dialog":
            from scheduler.providers.dialog360 import Dialog360Provider, env_keys

            if self.policy is None:
                raise HealthgateError("provider '360dialog' needs the policy file for its keys")
            return Dialog360Provider(self.settings.d360_base_url, env_keys(self.policy))
        raise HealthgateError(f"provider {name!r} has no sender in this version")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _imported(path: str, settings: Settings) -> Provider:
    """The sender an import path names (``module:callable``), built from ``settings``."""
    module, _, attribute = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise HealthgateError(f"providers: {path!r} names no importable sender ({exc})") from None
    return cast(Provider, factory(settings))
