"""The benchmark's provider: accepts everything, keeps nothing but a count."""

from __future__ import annotations

from scheduler.providers import Outbound, Sent
from scheduler.settings import Settings


class NullProvider:
    """A sender that costs nothing, so the benchmark measures healthgate, not a network."""

    #: It keeps no keys, so a send never confirmed is flagged, not resent.
    deduplicates = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.sent = 0

    def send(self, message: Outbound) -> Sent:
        self.sent += 1
        return Sent()

    def close(self) -> None:
        """Nothing is held open."""


#: How the benchmark's worker processes find it (``HEALTHGATE_PROVIDERS``).
IMPORT_PATH = "bench.provider:NullProvider"
