"""Enqueue with anything in any field: a message id, or InvalidInput naming the field (or
IdempotencyConflict, naming the key and the field, for a key reused with other content)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from policies.errors import IdempotencyConflict, InvalidInput
from scheduler.client import Healthgate
from scheduler.store.models import DecisionRecord, Message
from tests.conftest import LINE_A, LINE_B, START, budget, examples

pytestmark = pytest.mark.timeout(budget(90))

FIELDS = ("to", "body", "line", "chat_id", "idempotency_key", "send_at", "expires_at")

# Every Python string, lone surrogates and NUL included: callers pass what they have.
any_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.sampled_from(["\x00", "ok\x00", "\ud800", "ok\udfff", " ", "x" * 10_001]),
)
aware = st.datetimes(
    min_value=datetime.min,
    max_value=datetime.max,
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))]),
)
near = st.integers(min_value=-86_400, max_value=30 * 86_400).map(
    lambda s: START + timedelta(seconds=s)
)
anything = st.one_of(
    st.none(),
    any_text,
    st.binary(max_size=10),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    aware,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
numbers = st.sampled_from(["+14155550123", " +1 415-555-0124 ", "+442071838750", "+1415555"])


@st.composite
def arguments(draw: st.DrawFn) -> dict[str, Any]:
    """Per field, mostly a plausible value (so later fields are reached), else anything."""

    def pick(plausible: st.SearchStrategy[Any]) -> Any:
        return draw(anything) if draw(st.integers(0, 5)) == 0 else draw(plausible)

    return {
        "to": pick(numbers),
        "body": pick(st.one_of(st.just("Your order shipped"), any_text)),
        "line": pick(st.sampled_from([None, None, LINE_A, LINE_B, "+14155550199"])),
        "chat_id": pick(st.one_of(st.none(), st.none(), st.just("chat_1"), any_text)),
        "idempotency_key": pick(st.one_of(st.none(), st.sampled_from(["k1", "k2"]), any_text)),
        "send_at": pick(st.one_of(st.none(), near, aware)),
        "expires_at": pick(st.one_of(st.none(), near, aware)),
    }


def stored(hg: Healthgate) -> tuple[int, int]:
    with hg.runtime.sessions() as session:
        messages = session.scalar(select(func.count()).select_from(Message)) or 0
        decisions = session.scalar(select(func.count()).select_from(DecisionRecord)) or 0
    return messages, decisions


@settings(
    max_examples=examples(150),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(arguments())
def test_any_arguments_give_an_id_or_invalid_input_naming_the_field_and_nothing_stored(
    hg: Healthgate, kwargs: dict[str, Any]
) -> None:
    # Given a store as it stands
    before = stored(hg)

    # When anything is enqueued
    try:
        message_id = hg.enqueue(**kwargs)
    except (InvalidInput, IdempotencyConflict) as exc:
        refused = exc
    else:
        # Then it is stored, under the id returned
        assert message_id.startswith("msg_")
        assert hg.explain(message_id)["decisions"]
        return

    # Or it is refused naming the field and the value (a key drawn again with other
    # content: the key, then the field), and nothing is stored
    assert refused.field in FIELDS, refused
    named = "idempotency_key" if isinstance(refused, IdempotencyConflict) else refused.field
    assert str(refused).startswith(f"{named}=")
    assert stored(hg) == before


@settings(
    max_examples=examples(40),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(arguments(), min_size=1, max_size=4))
def test_a_batch_with_any_bad_message_stores_none_of_them(
    hg: Healthgate, batch: list[dict[str, Any]]
) -> None:
    before = stored(hg)

    try:
        ids = hg.enqueue_many(batch)
    except (InvalidInput, IdempotencyConflict) as exc:
        refused = exc
    else:
        assert len(ids) == len(batch)
        return

    assert refused.field.split(".")[-1] in FIELDS, refused
    assert stored(hg) == before
