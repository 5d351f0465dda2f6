"""Sends a dead worker never confirmed: resent with the same key, or flagged for a person."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory

from policies.config import OptOutScope
from scheduler.client import Healthgate
from scheduler.dispatch.answers import BatchAnswers
from scheduler.dispatch.reconcile import reconcile
from scheduler.dispatch.report import Report
from scheduler.dispatch.sending import Send, send_one
from scheduler.providers import Outbound, Sent
from scheduler.providers.log import LogProvider
from scheduler.runtime import utcnow
from scheduler.store.models import Message
from tests.conftest import LINE_A

Sends = Callable[[], list[dict[str, str]]]
BOB = "+14155550123"
#: Past the default ``reconcile_after_seconds``.
LATER = timedelta(minutes=6)


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler records anything."""


class Dying:
    """Calls ``inner`` (or not), then dies before the answer can be recorded."""

    def __init__(self, inner: LogProvider | None, deduplicates: bool = True) -> None:
        self.inner = inner
        self.deduplicates = deduplicates
        self.calls: list[Outbound] = []

    def send(self, message: Outbound) -> Sent:
        self.calls.append(message)
        if self.inner is not None:
            self.inner.send(message)
        raise WorkerDied

    def close(self) -> None:
        pass


def stuck_sending(hg: Healthgate, provider: Dying) -> str:
    """A message whose worker died during its provider call: left SENDING."""
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    hg.runtime.providers._clients["log"] = provider
    with pytest.raises(WorkerDied):
        hg.drain()
    hg.runtime.providers._clients.pop("log")
    assert hg.explain(message_id)["state"] == "sending"
    return message_id


def test_unconfirmed_send_after_the_call_is_settled_without_a_second_delivery(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message the log provider wrote before its worker died
    message_id = stuck_sending(hg, Dying(LogProvider(hg.runtime.settings.send_log_path)))
    # When beat reconciles it after the timeout
    clock.tick(LATER)
    report = reconcile(hg.runtime, utcnow(), 50)
    # Then it is sent, and the provider's log holds its key once
    assert report.counts == {"resent": 1, "SENT": 1}
    assert hg.explain(message_id)["state"] == "sent"
    assert [s["idempotency_key"] for s in sends()] == [message_id]


def test_unconfirmed_send_before_the_call_is_sent_once_with_the_same_key(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message whose worker died before the provider wrote it
    message_id = stuck_sending(hg, Dying(None))
    # When beat reconciles it after the timeout
    clock.tick(LATER)
    reconcile(hg.runtime, utcnow(), 50)
    # Then it is sent once, with its own id as the key, and explain says why
    assert hg.explain(message_id)["state"] == "sent"
    assert [s["idempotency_key"] for s in sends()] == [message_id]
    codes = [d["code"] for d in hg.explain(message_id)["decisions"]]
    assert "send_unconfirmed" in codes


def test_send_younger_than_the_timeout_is_left_alone(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message SENDING for less than the timeout (its call may still be under way)
    message_id = stuck_sending(hg, Dying(None))
    clock.tick(timedelta(minutes=4))
    # When beat reconciles
    report = reconcile(hg.runtime, utcnow(), 50)
    # Then nothing happens to it
    assert report.counts == {}
    assert hg.explain(message_id)["state"] == "sending"
    assert sends() == []


def test_provider_without_deduplication_is_flagged_for_a_person_and_not_resent(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message on a provider that cannot deduplicate, left SENDING
    provider = Dying(None, deduplicates=False)
    message_id = stuck_sending(hg, provider)
    hg.runtime.providers._clients["log"] = provider
    # When beat reconciles it after the timeout
    clock.tick(LATER)
    report = reconcile(hg.runtime, utcnow(), 50)
    # Then it needs review, with the reason, and the provider was not called again
    explained = hg.explain(message_id)
    assert explained["state"] == "needs_review"
    assert "cannot tell" in explained["decisions"][-1]["reason"]
    assert len(provider.calls) == 1
    assert hg.status()["messages"] == {"needs_review": 1}
    assert report.counts == {"needs_review": 1}


def test_recipient_who_opted_out_meanwhile_is_not_sent_again(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message left SENDING, then the recipient's STOP
    message_id = stuck_sending(hg, Dying(None))
    hg.record_inbound(LINE_A, BOB, "STOP")
    # When beat reconciles it after the timeout
    clock.tick(LATER)
    reconcile(hg.runtime, utcnow(), 50)
    # Then it is flagged for a person and nothing is sent
    explained = hg.explain(message_id)
    assert explained["state"] == "needs_review"
    assert "opted out" in explained["decisions"][-1]["reason"]
    assert sends() == []


def test_flagged_message_is_reconciled_once(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message already resent by one reconciliation whose worker died again
    provider = Dying(None)
    message_id = stuck_sending(hg, provider)
    clock.tick(LATER)
    hg.runtime.providers._clients["log"] = provider
    with pytest.raises(WorkerDied):
        reconcile(hg.runtime, utcnow(), 50)
    hg.runtime.providers._clients.pop("log")
    # When another tick reconciles before that resend's own timeout ran out
    report = reconcile(hg.runtime, utcnow(), 50)
    # Then it leaves the message to the first one
    assert report.counts == {}
    assert hg.explain(message_id)["state"] == "sending"


def test_log_provider_writes_a_key_once_across_processes_reading_one_file(
    hg: Healthgate, sends: Sends
) -> None:
    # Given two provider instances on one log, as two worker processes have
    first, second = (LogProvider(hg.runtime.settings.send_log_path) for _ in range(2))
    message = Outbound("m1", LINE_A, BOB, "hello", idempotency_key="m1")
    # When both send the same key, and another key follows
    first.send(message)
    second.send(message)
    second.send(Outbound("m2", LINE_A, BOB, "hello", idempotency_key="m2"))
    first.send(message)
    # Then each key is written once
    assert [s["idempotency_key"] for s in sends()] == ["m1", "m2"]


def test_late_answer_of_the_first_attempt_settles_a_flagged_message_as_sent(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a message flagged for a person because its provider cannot deduplicate
    provider = Dying(None, deduplicates=False)
    message_id = stuck_sending(hg, provider)
    hg.runtime.providers._clients["log"] = provider
    clock.tick(LATER)
    reconcile(hg.runtime, utcnow(), 50)
    hg.runtime.providers._clients.pop("log")
    assert hg.explain(message_id)["state"] == "needs_review"
    # When the first attempt's answer is recorded after all
    with hg.runtime.sessions() as session:
        stored = session.get_one(Message, message_id)
        line_id, enqueued_at = stored.line_id or 0, stored.created_at
    outbound = Outbound(message_id, LINE_A, BOB, "hello", idempotency_key=message_id)
    report = Report()
    answers = BatchAnswers(OptOutScope.ACCOUNT)
    send_one(hg.runtime, Send("log", line_id, outbound, enqueued_at), report, answers)
    # Then the message is sent
    assert report.counts == {"SENT": 1}
    assert hg.explain(message_id)["state"] == "sent"
