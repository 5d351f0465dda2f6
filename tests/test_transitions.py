"""One owner of a message's states: its table is the README's, every hold the gate can
return is released by a signal or by its own time, and no other module writes a state
or a decision."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from policies.codes import Code
from policies.config import Policy
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.outcome import Failure, after_failure
from policies.statuses import Action, ChatHealth, LineReputation, LineStatus
from policies.usage import LineUsage
from scheduler.store import transitions
from scheduler.store.models import MessageState
from scheduler.store.transitions import (
    CHAT_HOLDS,
    LINE_HOLDS,
    REPLY_HOLDS,
    ROUTE_HOLDS,
    TABLE,
    TIMED_HOLDS,
    IllegalMove,
)
from tests.conftest import LINE_A, START, examples
from tests.test_gate_properties import situations

ROOT = Path(__file__).resolve().parent.parent

#: Holds that a signal (health, a reply, a line's status) releases.
SIGNALLED = CHAT_HOLDS | REPLY_HOLDS | LINE_HOLDS | ROUTE_HOLDS
BOB = "+14155550123"


def readme_table() -> set[tuple[frozenset[str | None], str, str]]:
    """The rows of the README's table of moves: (from states, action, to state)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### How a message moves", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`"):
            continue
        sources = frozenset(
            None if word == "new" else word.strip("`") for word in re.split(r",\s*", cells[0])
        )
        rows.add((sources, cells[1].strip("`"), cells[2].strip("`")))
    return rows


def test_the_readme_shows_every_move_of_the_table_and_no_other() -> None:
    # Given the table the store enforces
    table = {
        (frozenset(s.value if s else None for s in row.sources), row.action.value, row.target.value)
        for row in TABLE
    }

    # Then the README's table holds the same rows
    assert readme_table() == table


@pytest.mark.parametrize(
    ("action", "source"),
    [
        (Action.SEND, MessageState.QUEUED),
        (Action.SENT, MessageState.QUEUED),
        (Action.RELEASE, MessageState.SENT),
        (Action.DROP, MessageState.SENT),
        (Action.EXPIRE, MessageState.SENDING),
        (Action.CLAIM, MessageState.CLAIMED),
    ],
)
def test_a_move_the_table_does_not_hold_is_refused(action: Action, source: MessageState) -> None:
    with pytest.raises(IllegalMove):
        transitions.changes(action, source, START, Code.OK, "no such move")


def test_an_action_with_two_ends_needs_one_named() -> None:
    with pytest.raises(IllegalMove):
        transitions.changes(Action.RECONCILE, MessageState.SENDING, START)

    moved = transitions.changes(
        Action.RECONCILE, MessageState.SENDING, START, to=MessageState.NEEDS_REVIEW
    )
    assert moved["state"] == "needs_review"


def test_final_states_have_no_way_out_but_a_late_answer_or_a_retry_by_hand() -> None:
    # A message handed to a person may still be settled by the provider's late answer;
    # a person may send a failed or unconfirmed one again; nothing else leaves a final
    # state.
    final = {
        MessageState.SENT,
        MessageState.DROPPED,
        MessageState.EXPIRED,
        MessageState.FAILED,
        MessageState.CANCELLED,
    }
    for row in TABLE:
        assert not (row.sources & final) or row.action is Action.RETRY, row
    leaving = {row.action for row in TABLE if MessageState.NEEDS_REVIEW in row.sources}
    assert leaving == {Action.SENT, Action.RETRY}
    retry = [row for row in TABLE if row.action is Action.RETRY]
    assert [(row.sources, row.target) for row in retry] == [
        ({MessageState.FAILED, MessageState.NEEDS_REVIEW}, MessageState.QUEUED)
    ]
    assert all(
        MessageState.SENDING not in row.sources for row in TABLE if row.action is Action.CANCEL
    )


@settings(max_examples=examples(300))
@given(situations())
def test_every_hold_the_gate_returns_is_released_by_a_signal_or_its_own_time(
    case: dict[str, Any],
) -> None:
    decision = decide(**case)

    if decision.action is Action.DEFER:
        # Held until something changes: a signal must release it.
        assert decision.code in SIGNALLED, decision
    if decision.action is Action.THROTTLE:
        assert decision.code in SIGNALLED | TIMED_HOLDS, decision


@pytest.mark.parametrize("failure", list(Failure))
@pytest.mark.parametrize("attempts", [1, 5, 6])
def test_every_hold_after_a_provider_answer_is_released_by_a_signal_or_its_time(
    failure: Failure, attempts: int
) -> None:
    policy = Policy.model_validate({"lines": [{"number": "+14155550100"}]})

    decision = after_failure(failure, "detail", attempts, policy, START, timedelta(seconds=5))

    if decision.action is Action.DEFER:
        assert decision.code in SIGNALLED, decision
    if decision.action is Action.THROTTLE:
        assert decision.code in TIMED_HOLDS, decision


OTHER = "+14155550199"
BODY = "c" * 32
ROOMY = {
    "sends_per_minute": 1000,
    "new_conversations_per_day": 1000,
    "distinct_recipients_per_hour": 1000,
    "sends_per_day": 10_000,
    "sends_per_recipient_per_minute": 30,
    "sends_per_recipient_per_day": 100,
}

#: For each hold the gate can return: the chat (and how many seconds ago its unanswered
#: or repeated message went), the line, the earlier sends (seconds ago, to whom,
#: starting a conversation) and the caps that lead to it.
GATE_CASES: dict[Code, dict[str, Any]] = {
    Code.NO_LINE: {"line": None},
    Code.LINE_CRITICAL: {"line": LineFacts(LINE_A, reputation=LineReputation.CRITICAL)},
    Code.LINE_FLAGGED: {"line": LineFacts(LINE_A, status=LineStatus.FLAGGED)},
    Code.CHAT_CRITICAL: {"chat": ChatFacts(health=ChatHealth.CRITICAL)},
    Code.CHAT_AT_RISK: {"chat": ChatFacts(health=ChatHealth.AT_RISK), "unanswered": 3600},
    Code.CONTENT_REPEATED: {"chat": ChatFacts(health=ChatHealth.AT_RISK), "repeated": 3600},
    Code.CONTENT_SAME_BODY: {"sent": [(600, OTHER, False)], "same_body": 1},
    Code.CAP_SENDS_PER_MINUTE: {"sent": [(10, OTHER, False)], "caps": {"sends_per_minute": 1}},
    Code.CAP_SENDS_PER_DAY: {"sent": [(7200, OTHER, False)], "caps": {"sends_per_day": 1}},
    Code.CAP_SENDS_PER_RECIPIENT_PER_MINUTE: {
        "sent": [(10, BOB, False)],
        "caps": {"sends_per_recipient_per_minute": 1},
    },
    Code.CAP_SENDS_PER_RECIPIENT_PER_DAY: {
        "sent": [(7200, BOB, False)],
        "caps": {"sends_per_recipient_per_day": 1},
    },
    Code.CAP_DISTINCT_RECIPIENTS_PER_HOUR: {
        "sent": [(600, OTHER, False)],
        "caps": {"distinct_recipients_per_hour": 1},
    },
    Code.CAP_NEW_CONVERSATIONS_PER_DAY: {
        "sent": [(7200, OTHER, True)],
        "caps": {"new_conversations_per_day": 1},
    },
}


def test_the_cases_cover_every_hold_a_release_set_names() -> None:
    provider_holds = {
        Code.PROVIDER_LINE_BLOCKED,
        Code.PROVIDER_RATE_LIMITED,
        Code.PROVIDER_UNAVAILABLE,
        Code.PROVIDER_NO_LINE,
    }

    assert set(GATE_CASES) | provider_holds == SIGNALLED | TIMED_HOLDS


@pytest.mark.parametrize("code", list(GATE_CASES))
def test_every_hold_a_release_set_names_is_one_the_gate_returns(code: Code) -> None:
    # A code in a release set that the gate never returns would be a misspelt hold.
    case = GATE_CASES[code]
    now = START
    ago = {key: (now - timedelta(seconds=case[key]),) for key in ("unanswered", "repeated")
           if key in case}  # fmt: skip
    chat = replace(
        case.get("chat", ChatFacts()),
        unanswered=ago.get("unanswered", ()),
        same_body_sent=ago.get("repeated", ()),
    )
    usage = LineUsage(day=[])
    for seconds, whom, new_chat in case.get("sent", []):
        usage.record(whom, now - timedelta(seconds=seconds), new_chat=new_chat, body_hash=BODY)
    policy = Policy.model_validate(
        {
            "lines": [{"number": LINE_A}],
            "caps": ROOMY | case.get("caps", {}),
            "content": {"same_body_max_recipients_per_hour": case.get("same_body", 100)},
        }
    )
    message = MessageFacts(recipient=BOB, body_hash=BODY)

    decision = decide(message, chat, case.get("line", LineFacts(LINE_A)), usage, policy, now)

    assert (decision.action, decision.code) in {(Action.DEFER, code), (Action.THROTTLE, code)}


SOURCE = ROOT / "scheduler"
OWNER = SOURCE / "store" / "transitions.py"
MIGRATIONS = SOURCE / "store" / "migrations"


def writes(tree: ast.AST) -> list[str]:
    """Where a module sets a message's state or builds a decision record."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                found += [
                    f"line {node.lineno}: .state ="
                    for element in elements
                    if isinstance(element, ast.Attribute) and element.attr == "state"
                ]
        if isinstance(node, ast.Dict):
            found += [
                f"line {node.lineno}: {{'state': ...}}"
                for key in node.keys
                if isinstance(key, ast.Constant)
                and key.value in {"state", "action"}
                and _in_write(node)
            ]
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in {"DecisionRecord", "DecisionRow"}:
                found.append(f"line {node.lineno}: {name}(...)")
            if name == "values" and any(k.arg == "state" for k in node.keywords):
                found.append(f"line {node.lineno}: .values(state=...)")
            if name == "setattr" and len(node.args) > 1:
                key = node.args[1]
                if isinstance(key, ast.Constant) and key.value == "state":
                    found.append(f"line {node.lineno}: setattr(..., 'state', ...)")
    return found


def _in_write(node: ast.Dict) -> bool:
    # Reads for people build dicts with a "state" key too (status, explain, listing):
    # those hold a value read from the row, never a literal state or a computed one.
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and key.value in {"state", "action"}:
            is_read = isinstance(value, ast.Attribute) and value.attr in {"state", "action"}
            return not is_read
    return False


def test_only_the_transitions_module_writes_a_state_or_a_decision() -> None:
    offenders = {}
    for path in sorted(SOURCE.rglob("*.py")):
        if path == OWNER or MIGRATIONS in path.parents:
            continue
        found = writes(ast.parse(path.read_text(), str(path)))
        if found:
            offenders[str(path.relative_to(ROOT))] = found

    assert offenders == {}


def test_the_check_finds_a_state_written_elsewhere() -> None:
    # The check above would pass on nothing; here it finds what it looks for.
    source = (
        "message.state = 'sent'\n"
        "update(Message).values(state='queued')\n"
        "rows.append({'state': moved})\n"
        "DecisionRecord(message_id=1)\n"
    )

    assert len(writes(ast.parse(source))) == 4
