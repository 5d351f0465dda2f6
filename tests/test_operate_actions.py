"""Acting on messages by hand: cancel, release and retry, each recorded with who asked,
each idempotent; and, on PostgreSQL, a cancel or a release racing a dispatch."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from policies.errors import InvalidInput
from policies.outcome import Failure
from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.dispatch import claim_due, dispatch_claimed
from scheduler.dispatch.reconcile import reconcile
from scheduler.operate import NotActionable
from scheduler.providers import Outbound, SendFailed, Sent
from scheduler.providers.log import read_send_log
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.store.transitions import TABLE
from tests import test_races as races
from tests.conftest import LINE_A, LINE_B, POLICY, START, examples
from tests.test_e2e import wait_until
from tests.test_races import Gate, Worker, waiting_on_a_lock

#: The race tests' PostgreSQL store and two clients on it.
pg_settings = races.pg_settings
two_clients = races.two_clients

BOB = "+14155550123"
CAROL = "+14155550124"


class Died(BaseException):
    """The worker died mid-call: nothing records the provider's answer."""


def decisions(hg: Healthgate, message_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hg.explain(message_id)["decisions"]
    return found


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def keys_sent(settings: Settings) -> list[str]:
    return [s["idempotency_key"] for s in read_send_log(settings.send_log_path)]


def provider(hg: Healthgate) -> Any:
    return hg.runtime.providers.get("log")


def failing(hg: Healthgate, monkeypatch: pytest.MonkeyPatch, failure: Failure) -> None:
    """The log provider refuses every send with ``failure``."""

    def refuse(message: Outbound) -> Sent:
        raise SendFailed(failure, "refused by the test")

    monkeypatch.setattr(provider(hg), "send", refuse)


def failed_message(hg: Healthgate, monkeypatch: pytest.MonkeyPatch, to: str = BOB) -> str:
    """A message the provider refused for good."""
    message_id = hg.enqueue(to=to, body="hello", line=LINE_A)
    with monkeypatch.context() as patch:
        failing(hg, patch, Failure.REJECTED)
        hg.drain()
    assert state(hg, message_id) == "failed"
    return message_id


# --- cancel ---------------------------------------------------------------------------


def test_cancel_by_id_records_who_asked_and_the_message_is_never_sent(
    hg: Healthgate, settings: Settings
) -> None:
    # Given a queued message
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    # When a program cancels it, saying why
    acted = hg.cancel(message_id, reason="wrong campaign", actor="billing-job")
    hg.drain()
    # Then it is cancelled, its decision names the actor, the code and the reason
    assert acted.changed == [message_id]
    assert acted.unchanged == []
    assert state(hg, message_id) == "cancelled"
    last = decisions(hg, message_id)[-1]
    assert (last["action"], last["code"], last["actor"]) == ("CANCEL", "cancelled", "billing-job")
    assert last["reason"] == "cancelled by billing-job: wrong campaign"
    assert keys_sent(settings) == []


def test_cancel_twice_changes_nothing_the_second_time(hg: Healthgate) -> None:
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    hg.cancel(message_id)
    before = decisions(hg, message_id)
    again = hg.cancel(message_id)
    assert (again.changed, again.unchanged) == ([], [message_id])
    assert decisions(hg, message_id) == before
    assert before[-1]["actor"] == "client"


def test_cancel_by_idempotency_key(hg: Healthgate) -> None:
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A, idempotency_key="order-7")
    assert hg.cancel(idempotency_key="order-7").changed == [message_id]
    assert state(hg, message_id) == "cancelled"


def test_cancel_by_recipient_takes_every_waiting_message_optionally_on_one_line(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # Given BOB's messages on two lines, one already sent, and CAROL's
    sent = hg.enqueue(to=BOB, body="first", line=LINE_A)
    hg.drain()
    on_a = hg.enqueue(to=BOB, body="a", line=LINE_A, send_at=START + timedelta(hours=1))
    on_b = hg.enqueue(to=BOB, body="b", line=LINE_B, send_at=START + timedelta(hours=1))
    carol = hg.enqueue(to=CAROL, body="c", line=LINE_A, send_at=START + timedelta(hours=1))
    # When BOB's messages on line A are cancelled (his number typed with spaces)
    assert hg.cancel(to="+1 415 555 0123", line=LINE_A).changed == [on_a]
    # Then line B's waits; and cancelling all of BOB's takes it, never the sent one
    assert state(hg, on_b) == "queued"
    assert hg.cancel(to=BOB).changed == [on_b]
    assert hg.cancel(to=BOB).changed == []
    assert (state(hg, sent), state(hg, carol)) == ("sent", "queued")


@pytest.mark.parametrize("final", ["sent", "sending"])
def test_cancel_of_a_message_sending_or_sent_is_refused_naming_its_state(
    hg: Healthgate, monkeypatch: pytest.MonkeyPatch, final: str
) -> None:
    # Given a message sent, or handed to its provider whose answer never came
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    if final == "sending":

        def die(message: Outbound) -> Sent:
            raise Died

        monkeypatch.setattr(provider(hg), "send", die)
        with pytest.raises(Died):
            hg.drain()
    else:
        hg.drain()
    before = decisions(hg, message_id)
    # When it is cancelled
    with pytest.raises(NotActionable, match=f"is {final}: only a message not yet sending"):
        hg.cancel(message_id)
    # Then nothing changed
    assert state(hg, message_id) == final
    assert decisions(hg, message_id) == before


def test_a_claimed_message_cancelled_before_its_dispatch_locks_it_is_not_sent(
    hg: Healthgate, settings: Settings
) -> None:
    # Given a message claimed by a dispatcher that has not yet locked its batch
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    claim = claim_due(hg.runtime, utcnow(), 10)
    assert claim.ids == [message_id]
    # When it is cancelled, then the dispatcher goes on
    assert hg.cancel(message_id).changed == [message_id]
    report = dispatch_claimed(hg.runtime, claim)
    # Then the dispatcher found its claim gone, and nothing was sent
    assert report.counts == {"stale_claim": 1}
    assert state(hg, message_id) == "cancelled"
    assert keys_sent(settings) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "message_id/idempotency_key/to"),
        ({"message_id": "x", "to": BOB}, "message_id/idempotency_key/to"),
        ({"message_id": "msg_nope"}, "id"),
        ({"to": "4155550123"}, "to"),
        ({"to": BOB, "line": "+14155559999"}, "line"),
        ({"message_id": "x", "line": LINE_A}, "line"),
        ({"to": BOB, "actor": " "}, "actor"),
        ({"to": BOB, "reason": "x" * 501}, "reason"),
    ],
)
def test_bad_cancel_input_names_the_field_and_changes_nothing(
    hg: Healthgate, kwargs: dict[str, Any], field: str
) -> None:
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    with pytest.raises(InvalidInput) as raised:
        hg.cancel(**kwargs)
    assert raised.value.field == field
    assert state(hg, message_id) == "queued"


# --- release --------------------------------------------------------------------------


def held(hg: Healthgate) -> dict[str, str]:
    """Messages held in three ways: by a CRITICAL line B, by BOB's CRITICAL chat on line
    A, and CAROL's on line A behind an AT_RISK chat that has its one unanswered send."""
    hg.set_line_health(LINE_B, "CRITICAL")
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    hg.set_chat_health(LINE_A, CAROL, "AT_RISK")
    ids = {
        "line_b": hg.enqueue(to=BOB, body="b", line=LINE_B),
        "bob_a": hg.enqueue(to=BOB, body="a", line=LINE_A),
        "carol_first": hg.enqueue(to=CAROL, body="one", line=LINE_A),
    }
    hg.drain()
    ids["carol"] = hg.enqueue(to=CAROL, body="two", line=LINE_A)
    hg.drain()
    return ids


@pytest.mark.parametrize(
    ("which", "released"),
    [
        ({}, {"line_b", "bob_a", "carol"}),
        ({"line": LINE_B}, {"line_b"}),
        ({"line": LINE_A, "to": BOB}, {"bob_a"}),
        ({"reason_code": "CHAT_AT_RISK"}, {"carol"}),
        ({"reason_code": "line_critical"}, {"line_b"}),
    ],
)
def test_release_by_line_chat_or_reason_queues_exactly_those_and_keeps_held_since(
    hg: Healthgate, clock: FrozenDateTimeFactory, which: dict[str, str], released: set[str]
) -> None:
    # Given held messages
    ids = held(hg)
    assert state(hg, ids["carol_first"]) == "sent"
    clock.tick(timedelta(minutes=5))
    # When some are released by hand
    got = hg.release(**which, reason="policy raised", actor="ops")
    # Then exactly those are queued, due now, with a decision naming who asked
    assert set(got) == {ids[name] for name in released}
    for name in ("line_b", "bob_a", "carol"):
        data = hg.explain(ids[name])
        assert data["state"] == ("queued" if name in released else data["state"])
        if name in released:
            last = data["decisions"][-1]
            assert (last["action"], last["code"], last["actor"]) == (
                "RELEASE",
                "release_manual",
                "ops",
            )
            assert last["reason"] == "released by ops: policy raised"
        else:
            assert data["state"] in {"throttled", "deferred"}
    # And released twice, nothing more moves
    assert hg.release(**which) == []
    # And the gate decides again: what still holds them holds them again
    hg.drain()
    assert {state(hg, ids[name]) for name in released} <= {"throttled", "deferred"}


def test_release_keeps_held_since_so_the_maximum_hold_still_counts(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="a", line=LINE_A)
    hg.drain()
    clock.tick(timedelta(hours=73))
    hg.release(line=LINE_A, to=BOB)
    hg.drain()
    # Held since the start: past the 72 h maximum hold, the gate expires it
    assert state(hg, message_id) == "expired"


def test_release_of_an_unknown_code_names_the_field(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.release(reason_code="cap_sends_per_fortnight")
    assert raised.value.field == "code"  # as the CLI option, --code, says it


# --- retry ----------------------------------------------------------------------------


def test_retry_of_a_failed_message_sends_it_with_the_same_key_and_records_who(
    hg: Healthgate, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message the provider refused
    message_id = failed_message(hg, monkeypatch)
    # When a person retries it
    acted = hg.retry(message_id, reason="number fixed at the provider", actor="cli:alice")
    # Then it is queued with a decision naming them, and the next drain sends it once,
    # with its id as the provider's key
    assert acted.changed == [message_id]
    last = decisions(hg, message_id)[-1]
    assert (last["action"], last["code"], last["actor"]) == ("RETRY", "retry_manual", "cli:alice")
    assert state(hg, message_id) == "queued"
    hg.drain()
    assert state(hg, message_id) == "sent"
    assert keys_sent(settings) == [message_id]
    assert hg.explain(message_id)["attempts"] == 2
    # And a retry asked again changes nothing and is no error
    before = decisions(hg, message_id)
    assert hg.retry(message_id).unchanged == [message_id]
    assert decisions(hg, message_id) == before


def test_retry_of_needs_review_keeps_the_key_so_a_provider_that_took_it_sends_once(
    hg: Healthgate, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a send the provider took, whose worker died before recording the answer
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    log = provider(hg)
    real = log.send

    def take_then_die(message: Outbound) -> Sent:
        real(message)
        raise Died

    with monkeypatch.context() as patch:
        patch.setattr(log, "send", take_then_die)
        with pytest.raises(Died):
            hg.drain()
        # And reconciled as a provider that cannot tell: handed to a person
        patch.setattr(log, "deduplicates", False)
        later = utcnow() + timedelta(seconds=settings.reconcile_after_seconds + 1)
        reconcile(hg.runtime, later, 10)
    assert state(hg, message_id) == "needs_review"
    # When the person retries it
    assert hg.retry(message_id).changed == [message_id]
    hg.drain()
    # Then it is sent, and the provider, which knows the key, delivered it once
    assert state(hg, message_id) == "sent"
    assert keys_sent(settings) == [message_id]


def test_retry_gives_the_message_its_tries_again(
    hg: Healthgate, clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message whose tries ran out on transient failures
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    failing(hg, monkeypatch, Failure.TRANSIENT)
    for _ in range(5):
        hg.drain()
        clock.tick(timedelta(days=1))
    assert hg.explain(message_id)["state"] == "failed"
    assert decisions(hg, message_id)[-1]["code"] == "attempts_exhausted"
    # When a person retries it and the provider fails once more
    hg.retry(message_id)
    hg.drain()
    # Then it waits for another try (attempt 1 of 5 again), never fails at once
    data = hg.explain(message_id)
    assert data["state"] == "throttled"
    assert data["attempts"] == 6
    assert "attempt 1 of 5" in data["decisions"][-1]["reason"]


def test_retry_by_code_retries_every_failed_message_of_it(
    hg: Healthgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = failed_message(hg, monkeypatch)
    second = failed_message(hg, monkeypatch, to=CAROL)
    other = hg.enqueue(to=BOB, body="waiting", line=LINE_A, send_at=START + timedelta(days=1))
    assert hg.retry(reason_code="provider_rejected").changed == sorted([first, second])
    assert hg.retry(reason_code="provider_rejected").changed == []
    assert state(hg, other) == "queued"


@pytest.mark.parametrize("kind", ["sent", "queued"])
def test_retry_of_a_message_that_never_failed_is_refused(hg: Healthgate, kind: str) -> None:
    message_id = hg.enqueue(to=BOB, body="hello", line=LINE_A)
    if kind == "sent":
        hg.drain()
    with pytest.raises(NotActionable, match="only a failed or needs_review message"):
        hg.retry(message_id)


def test_retry_of_a_purged_message_is_refused(
    hg: Healthgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = failed_message(hg, monkeypatch)
    hg.purge(timedelta(0), now=utcnow() + timedelta(seconds=1))
    with pytest.raises(NotActionable, match="its body was purged"):
        hg.retry(message_id)
    assert state(hg, message_id) == "failed"


def test_a_cancelled_message_is_purged_like_every_finished_one(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    message_id = hg.enqueue(to=BOB, body="secret words", line=LINE_A)
    hg.cancel(message_id)
    clock.tick(timedelta(days=31))
    assert hg.purge().messages == 1
    assert hg.explain(message_id)["purged_at"] is not None


# --- the command line -----------------------------------------------------------------

Run = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """`healthgate ...` in a fresh directory on the embedded default, after `init`."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    assert run("init")[0] == 0
    return run


def enqueue(run: Run, *extra: str) -> str:
    code, output = run("enqueue", "--to", BOB, "--body", "hello", "--line", LINE_A, *extra)
    assert code == 0, output
    return output.strip()


def cli_decisions(run: Run, message_id: str) -> list[dict[str, Any]]:
    code, output = run("explain", message_id, "--json")
    assert code == 0, output
    found: list[dict[str, Any]] = json.loads(output)["decisions"]
    return found


def test_cli_cancel_prints_what_it_did_and_records_the_os_user(cli: Run) -> None:
    message_id = enqueue(cli, "--send-at", "2099-01-01T00:00:00+00:00")
    code, output = cli("cancel", message_id, "--reason", "[red]oops")
    assert (code, output.splitlines()[0]) == (0, "cancelled: 1")
    assert cli_decisions(cli, message_id)[-1]["actor"] == "cli:alice"
    code, output = cli("cancel", message_id)
    assert (code, output.strip()) == (0, "cancelled: 0 (1 already cancelled)")
    # The reason is shown as written, never read as markup
    code, output = cli("explain", message_id)
    assert "cancelled by cli:alice: [red]oops [asked by cli:alice]" in output


def test_cli_cancel_of_a_sent_message_exits_2_with_the_reason(cli: Run) -> None:
    message_id = enqueue(cli)
    assert cli("drain")[0] == 0
    code, output = cli("cancel", message_id)
    assert code == 2
    assert f"message {message_id} is sent: only a message not yet sending" in output


def test_cli_cancel_by_recipient_and_line(cli: Run) -> None:
    first = enqueue(cli, "--send-at", "2099-01-01T00:00:00+00:00")
    code, output = cli("cancel", "--to", BOB, "--line", LINE_A, "--json", "--actor", "bot")
    assert code == 0, output
    assert json.loads(output) == {"cancelled": [first], "unchanged": []}
    assert cli_decisions(cli, first)[-1]["actor"] == "bot"


def test_cli_release_prints_how_many(cli: Run) -> None:
    assert cli("health", "chat", LINE_A, BOB, "CRITICAL")[0] == 0
    message_id = enqueue(cli)
    assert cli("drain")[0] == 0
    assert cli("release", "--code", "chat_critical")[1].strip() == "released: 1"
    assert cli("release", "--code", "chat_critical")[1].strip() == "released: 0"
    assert cli_decisions(cli, message_id)[-1]["code"] == "release_manual"


def test_cli_retry_of_a_queued_message_exits_2(cli: Run) -> None:
    message_id = enqueue(cli, "--send-at", "2099-01-01T00:00:00+00:00")
    code, output = cli("retry", message_id)
    assert code == 2
    assert "is queued: only a failed or needs_review message can be retried" in output
    assert cli("retry", "--code", "provider_rejected")[1].strip() == "retried: 0"


# --- any order (Hypothesis) ----------------------------------------------------------

Step = tuple[str, int]
steps = st.lists(
    st.tuples(st.sampled_from(["cancel", "retry", "drain", "release"]), st.integers(0, 2)),
    max_size=12,
)


@settings(max_examples=examples(15))
@given(steps=steps, rejected=st.sets(st.integers(0, 2)))
def test_actions_in_any_order_follow_a_model_and_asking_twice_changes_nothing(
    sqlite_template: Path, steps: list[Step], rejected: set[int]
) -> None:
    """Three messages; the provider refuses those in ``rejected``. Cancel, retry, release
    and drain in any order: each message's state is the model's, a refused action
    changes nothing, and the same action again changes no state and adds no decision."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "data").mkdir()
        shutil.copy(sqlite_template, root / "data" / "healthgate.db")
        (root / "healthgate.toml").write_text(POLICY)
        hg = Healthgate(
            Settings(
                data_dir=root / "data",
                policy_file=root / "healthgate.toml",
                database_url=f"sqlite:///{root / 'data' / 'healthgate.db'}",
                broker_url="memory://",
            )
        )
        try:
            hg.sync_lines()
            run_model(hg, steps, rejected)
        finally:
            hg.close()


def expect(
    action: str, i: int, model: list[str], retried: bool, rejected: set[int]
) -> tuple[list[str], bool]:
    """The model's states after ``action`` on message ``i``, and whether it is refused."""
    expected, refused = list(model), False
    if action == "cancel":
        refused = model[i] not in {"queued", "cancelled"}
        expected[i] = model[i] if refused else "cancelled"
    elif action == "retry":
        refused = model[i] != "failed" and not retried
        expected[i] = "queued" if model[i] == "failed" else model[i]
    elif action == "drain":
        expected = [
            ("failed" if n in rejected else "sent") if s == "queued" else s
            for n, s in enumerate(model)
        ]
    return expected, refused


def run_model(hg: Healthgate, steps: list[Step], rejected: set[int]) -> None:
    ids = [hg.enqueue(to=f"+1415555012{i}", body=f"m{i}", line=LINE_A) for i in range(3)]
    model = ["queued"] * 3
    retried = [False] * 3
    log = provider(hg)
    real = log.send

    def send(message: Outbound) -> Sent:
        if ids.index(message.message_id) in rejected:
            raise SendFailed(Failure.REJECTED, "refused")
        result: Sent = real(message)
        return result

    log.send = send
    for action, i in steps:
        for again in (False, True):
            before = [(state(hg, m), len(decisions(hg, m))) for m in ids]
            expected, refused = expect(action, i, model, retried[i], rejected)
            if refused:
                with pytest.raises(NotActionable):
                    getattr(hg, action)(ids[i])
            elif action in {"cancel", "retry"}:
                getattr(hg, action)(ids[i])
            elif action == "release":
                assert hg.release() == []  # nothing here is ever held
            else:
                hg.drain()
            if action == "retry" and model[i] == "failed":
                retried[i] = True
            model = expected
            after = [(state(hg, m), len(decisions(hg, m))) for m in ids]
            assert [s for s, _ in after] == model
            if again or refused:
                # The second time, or a refusal: no state and no decision changed
                assert after == before


# --- races on PostgreSQL -------------------------------------------------------------

pg = pytest.mark.timeout(120)
TARGETS = {
    (s.value if s else None, row.action.value): row.target.value
    for row in TABLE
    for s in row.sources
}


def consistent(hg: Healthgate, message_id: str) -> tuple[str, list[str]]:
    """The message's state, after checking that its recorded moves are a path through
    the table that ends where the message is; its actions."""
    data = hg.explain(message_id)
    where: str | None = None
    actions = []
    for d in data["decisions"]:
        if d["action"] == "REROUTE":
            continue
        if (where, d["action"]) not in TARGETS and where in {"queued", "throttled", "deferred"}:
            where = "claimed"  # a claim, not recorded
        where = TARGETS[(where, d["action"])]
        actions.append(d["action"])
    assert where == data["state"], data
    return data["state"], actions


@pg
def test_cancel_waits_for_a_dispatch_holding_the_message_and_then_is_refused(
    pg_settings: Settings, two_clients: tuple[Healthgate, Healthgate]
) -> None:
    # Given a dispatch holding BOB's claimed message locked while the limiter decides
    dispatcher, operator = two_clients
    message_id = dispatcher.enqueue(to=BOB, body="hello", line=LINE_A)
    gate = Gate()
    limiter = dispatcher.runtime.limiter
    limiter.hit_many = gate.before(limiter.hit_many)  # type: ignore[method-assign]
    claim = claim_due(dispatcher.runtime, utcnow(), 10)
    sending = Worker(lambda: dispatch_claimed(dispatcher.runtime, claim))
    sending.start()
    assert gate.inside.wait(30), "dispatch never reached the gate"
    # When the message is cancelled meanwhile
    cancelling = Worker(lambda: operator.cancel(message_id))
    cancelling.start()
    wait_until(lambda: waiting_on_a_lock(pg_settings), 20, "the cancel to wait for the lock")
    assert cancelling.is_alive()
    gate.go.set()
    sending.join(30)
    cancelling.join(30)
    # Then the cancel found it sending and was refused; it was sent once
    assert sending.error is None, sending.error
    assert isinstance(cancelling.error, NotActionable), cancelling.error
    assert dispatcher.explain(message_id)["state"] == "sent"
    assert keys_sent(pg_settings) == [message_id]


@pg
def test_cancel_racing_drain_ends_cancelled_or_sent_never_both(
    pg_settings: Settings, two_clients: tuple[Healthgate, Healthgate]
) -> None:
    dispatcher, operator = two_clients
    outcomes: dict[str, int] = {}
    for run in range(40):
        message_id = dispatcher.enqueue(to=BOB, body=f"hello {run}", line=LINE_A)
        start = threading.Barrier(2)

        def drain(start: threading.Barrier = start) -> None:
            start.wait(10)
            dispatcher.drain()

        def cancel(message_id: str = message_id, start: threading.Barrier = start) -> None:
            start.wait(10)
            with contextlib.suppress(NotActionable):
                operator.cancel(message_id)

        workers = [Worker(drain), Worker(cancel)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
            assert worker.error is None, worker.error
        final, actions = consistent(dispatcher, message_id)
        sent = keys_sent(pg_settings).count(message_id)
        assert (final, sent) in {("cancelled", 0), ("sent", 1)}, (final, actions, sent)
        if final == "cancelled":
            assert "SEND" not in actions
            assert "SENT" not in actions
        else:
            assert "CANCEL" not in actions
        outcomes[final] = outcomes.get(final, 0) + 1
    assert sum(outcomes.values()) == 40


@pg
def test_release_racing_drain_leaves_every_message_in_one_state_it_reached_by_the_table(
    pg_settings: Settings, two_clients: tuple[Healthgate, Healthgate]
) -> None:
    dispatcher, operator = two_clients
    dispatcher.set_chat_health(LINE_A, BOB, "CRITICAL")
    for run in range(15):
        held = [dispatcher.enqueue(to=BOB, body=f"held {run} {i}", line=LINE_A) for i in range(3)]
        due = [dispatcher.enqueue(to=CAROL, body=f"due {run} {i}", line=LINE_A) for i in range(3)]
        dispatcher.drain()
        more = [dispatcher.enqueue(to=BOB, body=f"more {run} {i}", line=LINE_A) for i in range(3)]
        start = threading.Barrier(2)

        def drain(start: threading.Barrier = start) -> None:
            start.wait(10)
            dispatcher.drain()

        def release(start: threading.Barrier = start) -> None:
            start.wait(10)
            operator.release(line=LINE_A)

        workers = [Worker(drain), Worker(release)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
            assert worker.error is None, worker.error
        sent = keys_sent(pg_settings)
        for message_id in held + due + more:
            final, _ = consistent(dispatcher, message_id)
            assert final in {"queued", "deferred", "sent", "throttled"}
            assert sent.count(message_id) == (final == "sent")
        assert all(state(dispatcher, m) in {"queued", "deferred"} for m in held + more)
