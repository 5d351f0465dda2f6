"""The limiter interface: an atomic re-check and consume of every cap of a line."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict
from policies.usage import LineUsage


class Ticket(NamedTuple):
    """One send a dispatcher asks the limiter for."""

    message_id: str
    #: The attempt this send is (1 for the first): a redelivered dispatch of the same
    #: attempt is counted once, a retry after a provider failure counts again.
    attempt: int
    #: The line's number (E.164), the same in every process.
    line: str
    recipient: str
    #: The send starts a conversation (counts against new conversations per day).
    new_chat: bool

    @property
    def key(self) -> str:
        return f"{self.message_id}:{self.attempt}"


class Limiter(ABC):
    """Caps shared by every worker and host.

    The pure gate first checks a message against the usage loaded for its batch (no side
    effect); :meth:`hit` (or :meth:`hit_many` for a batch's sends) then re-checks every
    cap against the shared count and consumes one send only if all pass, atomically, so
    two workers cannot both take the last slot.
    """

    def lock(self, session: Session, line_ids: Collection[int]) -> None:
        """Serialize dispatchers of these lines for the rest of ``session``'s transaction.

        Backends that count outside the database need nothing here.
        """
        return None

    @abstractmethod
    def hit(self, session: Session, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        """Consume one send if it fits every cap at ``now``.

        Returns ``allowed_at == now`` when consumed (or already consumed for this ticket);
        otherwise the earliest moment every cap allows it and the cap that binds, and
        nothing is consumed. ``session`` is the dispatcher's gating transaction.
        """

    def hit_many(
        self, session: Session, requests: Sequence[tuple[Ticket, Limits]], now: datetime
    ) -> list[Verdict]:
        """Consume a batch's sends: one verdict per request, in order.

        Each verdict, and what it consumes, is what :meth:`hit` calls in the same order
        would give: a refused send consumes nothing and later ones are still tried, and a
        ticket already consumed (earlier, or earlier in ``requests``) passes again without
        counting twice. Backends override it to spend one round trip on the whole batch.
        """
        return [self.hit(session, ticket, limits, now) for ticket, limits in requests]

    def windows(
        self,
        lines: Mapping[int, str],
        limits: Mapping[int, Limits],
        now: datetime,
        headroom: int,
        recipients: Mapping[int, Collection[str]],
        single: Collection[str] = (),
    ) -> dict[int, LineUsage] | None:
        """The caps' windows of ``lines`` (numbers by line id) as this limiter counts them,
        for a batch of up to ``headroom`` sends to ``recipients`` (by line id): counts,
        and times only near a cap of ``limits``, as :func:`scheduler.store.usage.load_usage`
        reads the store. None (the default): the store's count is the one to read.

        ``single``: recipients with one send in the batch. A limiter whose :meth:`hit`
        gives the verdict the gate would give may leave their own windows unread while
        their line is far from its caps (the gate then passes them, the hit decides).
        """
        return None

    def close(self) -> None:
        """Release connections; the default holds none."""
        return None
