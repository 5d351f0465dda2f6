"""What one dispatch pass did, counted by outcome."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """What one dispatch pass did, by outcome."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n

    def merge(self, other: Report) -> None:
        for outcome, n in other.counts.items():
            self.add(outcome, n)
