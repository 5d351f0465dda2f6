"""Policy files mutated at random: each loads and works, or is refused naming the file and key."""

from __future__ import annotations

import tempfile
import tomllib
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.config import Policy, load_policy
from policies.errors import PolicyFileError
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide, limits_for
from policies.outcome import Failure, after_failure
from policies.statuses import ChatHealth, LineReputation
from policies.usage import LineUsage
from tests.conftest import START, budget, examples

pytestmark = pytest.mark.timeout(budget(60))

STARTER = files("policies").joinpath("starter.toml").read_text(encoding="utf-8")

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["+14155550123", "log", "linq", "360dialog", "exact", "chat", "KEY_ENV"]),
    st.datetimes(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=10), inner)
    ),
    max_leaves=6,
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a parsed TOML document, tables and array items included."""
    found: list[tuple[Any, ...]] = []
    items = document.items() if isinstance(document, dict) else enumerate(document)
    for key, value in items:
        found.append((*prefix, key))
        if isinstance(value, dict | list):
            found.extend(paths(value, (*prefix, key)))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The starter policy with a few keys replaced, removed or added."""
    document: dict[str, Any] = tomllib.loads(STARTER)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths(document)))
        *parents, last = path
        holder: Any = document
        for key in parents:
            holder = holder[key]
        change = draw(st.sampled_from(["replace", "remove", "add"]))
        if change == "replace":
            holder[last] = draw(toml_values)
        elif change == "remove" and isinstance(holder, dict):
            del holder[last]
        elif isinstance(holder, dict):
            holder[draw(st.text(min_size=1, max_size=12))] = draw(toml_values)
    return document


def works(policy: Policy) -> None:
    """A policy that loaded must also decide: every hold, window and backoff is computable."""
    now = START
    for line in policy.lines:
        for reputation in LineReputation:
            limits_for(LineFacts(line.number, reputation, recovered_at=now), policy, now)
        facts = LineFacts(line.number)
        held = MessageFacts("+14155550123", held_since=now, body_hash="x" * 32)
        for health in ChatHealth:
            chat = ChatFacts(health=health, unanswered=(now,), same_body_sent=(now,))
            decide(held, chat, facts, LineUsage(), policy, now)
        decide(held, ChatFacts(), None, LineUsage(), policy, now)
    for attempts in range(1, min(policy.dispatch.max_attempts, 100) + 1):
        after_failure(Failure.TRANSIENT, "HTTP 503", attempts, policy, now, timedelta(0))


def load(text: str | bytes) -> Policy | PolicyFileError:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "healthgate.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        try:
            return load_policy(path)
        except PolicyFileError as exc:
            error = exc
    assert error.path == str(path)
    assert str(path) in str(error)
    return error


@settings(max_examples=examples(300))
@given(mutated_documents())
def test_a_mutated_policy_loads_and_decides_or_names_the_file_and_the_key(
    document: dict[str, Any],
) -> None:
    # Given the starter policy with keys replaced, removed or added, written as TOML
    # When it is loaded
    result = load(tomli_w.dumps(document))

    # Then it is refused naming the key, or it loads and every rule can be computed
    if isinstance(result, PolicyFileError):
        assert result.key, f"no key named: {result}"
        # A top-level key may itself hold a dot: it is named whole.
        top = result.key if result.key in document else result.key.split(".")[0].split("[")[0]
        assert top in {*document, *Policy.model_fields, "(top level)"}
    else:
        works(result)


text_edits = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=len(STARTER)),
        st.integers(min_value=0, max_value=8),
        st.one_of(st.text(max_size=12), st.sampled_from(["=", "[", "]", '"', "\n", "[[lines]]"])),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=examples(300))
@given(text_edits)
def test_a_garbled_policy_file_is_refused_naming_the_file(
    edits: list[tuple[int, int, str]],
) -> None:
    # Given the starter policy's text with characters cut and others pasted in
    text = STARTER
    for at, cut, pasted in edits:
        text = text[:at] + pasted + text[at + cut :]

    # When it is loaded, Then it loads and works, or the error names the file
    result = load(text)
    if isinstance(result, Policy):
        works(result)


@settings(max_examples=examples(50))
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=len(STARTER)))
def test_a_policy_file_with_bytes_that_are_not_text_is_refused_naming_the_file(
    junk: bytes, at: int
) -> None:
    data = STARTER.encode()
    result = load(data[:at] + junk + data[at:])

    if isinstance(result, Policy):
        works(result)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("chat", "at_risk_window_hours"),
        ("chat", "critical_max_hold_hours"),
        ("line", "recovery_ramp_hours"),
        ("content", "at_risk_repeat_window_hours"),
        ("dispatch", "retry_base_seconds"),
        ("dispatch", "retry_max_seconds"),
    ],
)
@pytest.mark.parametrize("value", [float("inf"), 1e12])
def test_an_endless_window_hold_or_backoff_is_refused_naming_the_key(
    section: str, key: str, value: float
) -> None:
    # Given the starter policy with one window, hold or backoff set beyond any calendar
    document = tomllib.loads(STARTER)
    document[section][key] = value

    # When it is loaded
    result = load(tomli_w.dumps(document))

    # Then it is refused naming that key (it used to load, then overflow in the gate)
    assert isinstance(result, PolicyFileError)
    assert result.key == f"{section}.{key}"


def test_backoff_after_a_thousand_attempts_stays_at_its_maximum() -> None:
    # Given a policy that allows the most attempts a policy may
    document = tomllib.loads(STARTER)
    document["dispatch"]["max_attempts"] = 1_000
    policy = load(tomli_w.dumps(document))
    assert isinstance(policy, Policy)

    # When the 999th attempt fails
    decision = after_failure(Failure.TRANSIENT, "HTTP 503", 999, policy, START)

    # Then the next try waits the maximum backoff, no more
    assert decision.not_before == START + timedelta(seconds=3600)
