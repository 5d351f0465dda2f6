"""Health set by hand with anything in any argument: done, or InvalidInput and no change."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from policies.errors import InvalidInput
from scheduler.client import Healthgate
from scheduler.store.models import Chat, Line, Message, OptOut
from tests.conftest import LINE_A, LINE_B, START, budget, examples

pytestmark = pytest.mark.timeout(budget(90))

FUZZ = settings(
    max_examples=examples(60),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
odd = st.one_of(
    st.none(),
    st.integers(),
    st.binary(max_size=4),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
    st.sampled_from(["\x00", "OPTED_OUT\x00", "\ud800"]),
)
lines = st.one_of(st.sampled_from([LINE_A, LINE_B, "+14155550199"]), odd)
recipients = st.one_of(st.sampled_from(["+14155550123", "+1 415 555 0124"]), odd)
stamps = st.one_of(
    st.none(),
    st.integers(-86_400, 86_400).map(lambda s: START + timedelta(seconds=s)),
    st.datetimes(),  # naive
    st.just(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-12)))),
    st.just(datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))),
    odd,
)
chat_states = st.one_of(st.sampled_from(["HEALTHY", "AT_RISK", "CRITICAL", "OPTED_OUT"]), odd)
line_states = st.one_of(
    st.sampled_from(["HEALTHY", "AT_RISK", "CRITICAL", "ACTIVE", "FLAGGED", "OPTED_OUT"]), odd
)


def snapshot(hg: Healthgate) -> list[Any]:
    with hg.runtime.sessions() as session:
        return [
            [tuple(row) for row in session.execute(select(*table.__table__.columns))]
            for table in (Line, Chat, Message, OptOut)
        ]


def attempt(hg: Healthgate, call: Any, *args: Any) -> InvalidInput | None:
    """Call; return the InvalidInput it raised, if any (any other error fails the test)."""
    try:
        call(*args)
    except InvalidInput as exc:
        return exc
    return None


@pytest.fixture
def busy(hg: Healthgate) -> Healthgate:
    hg.enqueue(to="+14155550123", body="hi", line=LINE_A)
    return hg


@FUZZ
@given(line=lines, recipient=recipients, status=chat_states, stamp=stamps)
def test_setting_a_chats_health_with_any_arguments_is_done_or_refused_unchanged(
    busy: Healthgate, line: Any, recipient: Any, status: Any, stamp: Any
) -> None:
    before = snapshot(busy)

    refused = attempt(busy, busy.set_chat_health, line, recipient, status, stamp)

    if refused is not None:
        assert refused.field in {"line", "recipient", "status", "updated_at"}, refused
        assert snapshot(busy) == before


@FUZZ
@given(line=lines, status=line_states, stamp=stamps)
def test_setting_a_lines_health_with_any_arguments_is_done_or_refused_unchanged(
    busy: Healthgate, line: Any, status: Any, stamp: Any
) -> None:
    before = snapshot(busy)

    refused = attempt(busy, busy.set_line_health, line, status, stamp)

    if refused is not None:
        assert refused.field in {"line", "status", "updated_at"}, refused
        assert snapshot(busy) == before


@FUZZ
@given(line=lines, recipient=recipients, text=st.one_of(st.sampled_from(["STOP", "OPTIN"]), odd))
def test_recording_any_inbound_message_is_done_or_refused_unchanged(
    busy: Healthgate, line: Any, recipient: Any, text: Any
) -> None:
    before = snapshot(busy)

    refused = attempt(busy, busy.record_inbound, line, recipient, text)

    if refused is not None:
        assert refused.field in {"line", "recipient", "text"}, refused
        assert snapshot(busy) == before


def test_a_naive_updated_at_is_refused_naming_it(hg: Healthgate) -> None:
    # It used to reach the database and fail there with a driver error.
    with pytest.raises(InvalidInput, match="updated_at"):
        hg.set_line_health(LINE_A, "AT_RISK", updated_at=datetime(2026, 1, 1))

    assert hg.status()["lines"][0]["reputation"] == "HEALTHY"


def test_inbound_text_that_is_not_text_is_refused_naming_it(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput, match="text"):
        hg.record_inbound(LINE_A, "+14155550123", None)  # type: ignore[arg-type]
