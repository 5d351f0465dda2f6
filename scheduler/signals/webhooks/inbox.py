"""Receiving Linq webhooks: verify the signature, then record and apply in one transaction."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

from policies.config import Policy
from policies.errors import InvalidInput, shown
from policies.signals import not_ahead
from scheduler import constants, metrics
from scheduler.runtime import Runtime, utcnow
from scheduler.signals import consent, health
from scheduler.signals.webhooks.linq import (
    ChatHealthSeen,
    Fact,
    InboundSeen,
    LineSeen,
    event_id_of,
    event_type_of,
    parse_event,
)

# What became of an event lives in a module of its own, light enough for the command
# line's help to list; re-exported here.
from scheduler.signals.webhooks.outcomes import STORED_OUTCOMES as STORED_OUTCOMES
from scheduler.signals.webhooks.outcomes import Outcome as Outcome
from scheduler.store.lines import NOT_DECLARED, get_line, sync_lines
from scheduler.store.models import Chat, Line, WebhookEvent
from scheduler.store.router import chat_for

log = logging.getLogger(__name__)

SOURCE = "linq"
SECRET_SETTING = "HEALTHGATE_LINQ_WEBHOOK_SECRET"


class Receipt(NamedTuple):
    """The HTTP answer to one delivery."""

    status_code: int
    body: dict[str, Any]
    #: Seconds the provider should wait before delivering again (``Retry-After``).
    retry_after: int | None = None


class LinqInbox:
    """Turns signed Linq deliveries into recorded, applied events."""

    def __init__(self, runtime: Runtime, secret: SecretStr | None) -> None:
        self.runtime = runtime
        #: One per secret of the setting: while a secret is rotated both verify.
        self.verifiers = _verifiers(secret) if secret is not None else []

    def receive(self, body: bytes, headers: Mapping[str, str]) -> Receipt:
        """Answer one delivery; only a verified body is read, and only once per event id."""
        receipt = self._receive(body, headers)
        metrics.WEBHOOKS.labels(source=SOURCE, outcome=_outcome(receipt)).inc()
        return receipt

    def _receive(self, body: bytes, headers: Mapping[str, str]) -> Receipt:
        if not self.verifiers:
            return Receipt(503, {"error": f"{SECRET_SETTING} is not set: webhooks are refused"})
        refusal = _verify(self.verifiers, body, headers)
        if refusal is not None:
            log.warning("linq webhook refused: signature not verified (%s)", refusal)
            return Receipt(401, {"error": f"webhook-signature: not verified ({refusal})"})
        webhook_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        for attempt in range(2):
            try:
                return self._record(body, webhook_id, utcnow())
            except IntegrityError:
                # A concurrent delivery of the same event committed first; the next
                # pass finds its record and answers as for any redelivery.
                if attempt:
                    raise
            except (DBAPIError, PoolTimeout) as exc:
                if not _busy(exc):
                    raise
                # The transaction was rolled back whole: no record, so the provider's
                # redelivery is read afresh, not answered as a duplicate.
                log.warning("linq webhook not recorded: database busy (%s)", type(exc).__name__)
                return Receipt(
                    503,
                    {"error": "database busy: nothing was recorded, deliver again"},
                    retry_after=constants.WEBHOOK_RETRY_AFTER_SECONDS,
                )
        raise AssertionError("unreachable")

    def _record(self, body: bytes, webhook_id: str, now: datetime) -> Receipt:
        error: InvalidInput | None = None
        try:
            event = parse_event(body)
        except InvalidInput as exc:
            error, event = exc, None
        # Linq dedupes on event_id; the signed webhook-id stands in when the body has none.
        key = f"{SOURCE}:{event.event_id if event else event_id_of(body) or _bounded(webhook_id)}"
        policy = self.runtime.policy
        with self.runtime.sessions.begin() as session:
            known = session.get(WebhookEvent, key, with_for_update=True)
            if known is not None and known.outcome != Outcome.REJECTED.value:
                log.info("linq event %s seen before (%s): nothing changed", key, known.outcome)
                return Receipt(200, {"outcome": Outcome.DUPLICATE, "first": known.outcome})
            # A delivery refused before changed nothing: its redelivery is read again
            # (the refusal may have been ours to mend, an undeclared line since declared).
            row = known or WebhookEvent(id=key, source=SOURCE)
            row.event_type = event.event_type if event else event_type_of(body)
            row.received_at = now
            row.outcome = Outcome.REJECTED.value
            # As it came, but for NUL, which PostgreSQL text cannot hold.
            row.payload = body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
            if known is None:
                session.add(row)
            # Written first: a concurrent delivery of the same id waits on this row.
            session.flush()
            outcome, detail = Outcome.REJECTED, None
            if event is not None:
                try:
                    with session.begin_nested():
                        sync_lines(session, policy, now)
                        outcome, detail = apply(session, policy, event.facts, now)
                        detail = detail or event.note
                except InvalidInput as exc:
                    error = exc
            row.outcome = outcome.value
            row.detail = str(error) if error is not None else detail
        log.info("linq event %s (%s): %s", key, row.event_type, row.outcome)
        if error is not None:
            return Receipt(400 if error.field == "body" else 422, _refusal(error))
        return Receipt(200, {"outcome": outcome, "detail": row.detail})


def _outcome(receipt: Receipt) -> str:
    """The outcome of a delivery as counted: an event's, or why none was read."""
    recorded = receipt.body.get("outcome")
    if recorded is not None:
        return str(recorded)
    # Refused before the body was read: not signed with our secret, or no secret or a
    # busy database (the provider delivers again).
    return "unverified" if receipt.status_code == 401 else "unavailable"


def apply(
    session: Session, policy: Policy, facts: tuple[Fact, ...], now: datetime
) -> tuple[Outcome, str | None]:
    """Apply every fact; APPLIED if any changed something, IGNORED if none did (and why)."""
    notes = [_apply(session, policy, fact, now) for fact in facts]
    if any(note is None for note in notes):
        return Outcome.APPLIED, None
    return Outcome.IGNORED, "; ".join(n for n in notes if n) or None


def _apply(session: Session, policy: Policy, fact: Fact, now: datetime) -> str | None:
    """Apply one fact; None when it changed something, else why it did not."""
    not_ahead(fact.time, fact.time_field, now, policy.signals.time_tolerance)
    try:
        if isinstance(fact, LineSeen):
            get_line(session, fact.number, fact.line_field)
            return None if _apply_line(session, policy, fact, now) else _UNCHANGED
        chat = _chat(session, fact, now)
    except InvalidInput as exc:
        if exc.problem != NOT_DECLARED:
            raise
        # A line of the account that healthgate does not send from: nothing to do, and
        # a refusal would have the provider deliver it again and again.
        return f"{exc.field} {exc.value} {NOT_DECLARED}"
    line = session.get_one(Line, chat.line_id).number
    if isinstance(fact, ChatHealthSeen):
        applied = health.set_chat_health(
            session,
            policy,
            line,
            chat.recipient,
            fact.status.value,
            now,
            updated_at=fact.updated_at,
            source="linq webhook",
        )
        return None if applied else _UNCHANGED
    consent.record_inbound(
        session, policy, line, chat.recipient, fact.text, now, at=fact.at, source="linq webhook"
    )
    return None


#: Why a valid report changed nothing.
_UNCHANGED = "changes nothing: older than what is known, or the same"


def _apply_line(session: Session, policy: Policy, fact: LineSeen, now: datetime) -> bool:
    changed = False
    # Status first: a line still FLAGGED must not release its held messages.
    if fact.status is not None:
        changed |= health.set_line_status(
            session,
            policy,
            fact.number,
            fact.status.value,
            now,
            updated_at=fact.changed_at,
            source=SOURCE,
        )
    if fact.reputation is not None:
        changed |= health.set_line_reputation(
            session,
            policy,
            fact.number,
            fact.reputation.value,
            now,
            updated_at=fact.changed_at,
            source=SOURCE,
        )
    return changed


def _chat(session: Session, fact: ChatHealthSeen | InboundSeen, now: datetime) -> Chat:
    """The chat by the provider's id, else by our line and the other party (created if new)."""
    chat = session.scalars(select(Chat).where(Chat.provider_chat_id == fact.chat_id)).one_or_none()
    if chat is not None:
        return chat
    if fact.line is None or fact.recipient is None:
        field = fact.line_field if fact.line is None else "data.handles"
        raise InvalidInput(
            field, None, f"is needed: no chat is known with id {fact.chat_id!r} to find it by"
        )
    line = get_line(session, fact.line, fact.line_field)
    return chat_for(session, line, fact.recipient, now, fact.chat_id)


def _bounded(webhook_id: str) -> str:
    """The webhook-id as a key: as it came when short and plain, else its digest."""
    if 0 < len(webhook_id) <= 200 and "\x00" not in webhook_id:
        return webhook_id
    return "sha256:" + hashlib.sha256(webhook_id.encode("utf-8", "replace")).hexdigest()


def check_secrets(secret: SecretStr | None) -> None:
    """Refuse (``InvalidInput`` naming the setting, never a secret) a setting that holds a
    secret no delivery could verify under; None is no secret: webhooks are refused."""
    if secret is not None:
        _verifiers(secret)


def _verifiers(secret: SecretStr) -> list[Webhook]:
    """One verifier per secret of the setting (separated by spaces); at least one."""
    secrets = secret.get_secret_value().split()
    if not secrets:
        raise InvalidInput(SECRET_SETTING, "", "holds no secret")
    verifiers = []
    for number, value in enumerate(secrets, 1):
        try:
            # Strictly base64: a lenient decoder skips stray characters, so a mistyped
            # secret would start and then refuse every delivery.
            base64.b64decode(value.removeprefix("whsec_"), validate=True)
            verifiers.append(Webhook(value))
        except (EmptyWebhookSecretError, ValueError):
            # The value is a secret: only its place in the list is named.
            where = f"whsec_... (secret {number} of {len(secrets)})"
            raise InvalidInput(SECRET_SETTING, where, "is not a base64 secret") from None
    return verifiers


def _verify(verifiers: list[Webhook], body: bytes, headers: Mapping[str, str]) -> str | None:
    """None when the delivery verifies under any secret; else why it does not (the first's)."""
    refusals = []
    for verifier in verifiers:
        try:
            verifier.verify(body, dict(headers), json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            refusals.append(str(exc))
        else:
            return None
    return refusals[0]


def _busy(exc: DBAPIError | PoolTimeout) -> bool:
    """The database could not take the write now (locked, busy, unreachable): try later.

    SQLite's "database is locked", PostgreSQL's lock and deadlock errors and a lost
    connection are all ``OperationalError``; a pool with no free connection times out.
    """
    if isinstance(exc, PoolTimeout | OperationalError):
        return True
    return exc.connection_invalidated


def _refusal(error: InvalidInput) -> dict[str, Any]:
    """The answer to a refused event: the value as it came when short and plain, else
    as the message shows it (at most its first hundred characters)."""
    value = error.value
    plain = value is None or isinstance(value, str | int | float | bool)
    text = shown(value)
    return {
        "error": str(error),
        "field": error.field,
        "value": value if plain and text == repr(value) else text,
        "outcome": Outcome.REJECTED,
    }
