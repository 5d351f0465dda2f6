"""Signals kept as facts: late, repeated or conflicting signals never undo an opt-out or
a pause. One test for each way they did, on every store, through the real paths."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi.testclient import TestClient
from freezegun.api import FrozenDateTimeFactory
from pydantic import SecretStr
from typer.testing import CliRunner

from policies.config import OptOutMode, OptOutPolicy
from policies.errors import InvalidInput
from policies.keywords import Inbound, classify
from scheduler.cli import app as cli_app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store import listing
from scheduler.web import create_app
from tests.conftest import LINE_A, LINE_B, POLICY, START
from tests.fakes import FakeProvider, answer
from tests.linq_events import SECRET, chat_health_event, line_event, message_event, signed
from tests.web_client import BASE_URL

BOB = "+14155550123"
CAROL = "+14155550124"
Post = Callable[..., httpx2.Response]
#: The shared two lines, in the mode where any later message opts back in.
LINQ_MODE = POLICY + '\n[opt_out]\nmode = "linq"\n'


@pytest.fixture
def post(settings: Settings, hg: Healthgate) -> Post:
    app = create_app(settings.model_copy(update={"linq_webhook_secret": SecretStr(SECRET)}))
    client = TestClient(app, base_url=BASE_URL)

    def _post(payload: dict[str, Any] | bytes) -> httpx2.Response:
        body, headers = signed(payload, datetime.now(UTC))
        return client.post("/webhooks/linq", content=body, headers=headers)

    return _post


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def codes(hg: Healthgate, message_id: str) -> list[str]:
    return [d["code"] for d in hg.explain(message_id)["decisions"]]


def chat(hg: Healthgate, line: str, recipient: str) -> dict[str, Any]:
    with hg.runtime.sessions() as session:
        found = listing.chats(session, None, line, 100)
    return next(c for c in found if c["recipient"] == recipient)


def line(hg: Healthgate, number: str) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in hg.status()["lines"] if x["number"] == number)
    return found


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


# -- the opt-out ledger --------------------------------------------------------------


def test_a_stop_delivered_after_a_later_reply_still_opts_out(
    hg: Healthgate, post: Post, sends: Callable[[], list[Any]], clock: FrozenDateTimeFactory
) -> None:
    # Given Bob's reply at 9:01 was delivered first
    clock.tick(minutes(5))
    post(message_event(LINE_A, BOB, START + minutes(1), text="thanks"))

    # When his STOP of 9:00 arrives late
    response = post(message_event(LINE_A, BOB, START, text="STOP"))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    hg.drain()

    # Then he is opted out (a reply is no opt-in in the default mode): nothing goes
    assert response.json()["outcome"] == "applied"
    assert state(hg, message_id) == "dropped"
    assert sends() == []


@pytest.mark.parametrize("status", ["HEALTHY", "AT_RISK", "CRITICAL"])
def test_a_provider_health_report_after_a_stop_never_clears_it(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory, status: str
) -> None:
    # Given Bob opted out, on line A
    post(message_event(LINE_A, BOB, START, text="STOP", chat_id="chat_a"))

    # When Linq reports his chat's health later
    clock.tick(minutes(1))
    post(message_event(LINE_A, BOB, START + minutes(1), text="ok", status=status, chat_id="chat_a"))
    on_a = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    on_b = hg.enqueue(to=BOB, body="hi", line=LINE_B)
    hg.drain()

    # Then he is still opted out, on every line
    assert (state(hg, on_a), state(hg, on_b)) == ("dropped", "dropped")


@pytest.mark.parametrize("status", ["HEALTHY", "AT_RISK", "CRITICAL"])
def test_setting_the_health_of_an_opted_out_chat_by_hand_is_refused(
    hg: Healthgate, status: str
) -> None:
    hg.record_inbound(LINE_A, BOB, "STOP")

    with pytest.raises(InvalidInput) as refused:
        hg.set_chat_health(LINE_A, BOB, status)

    assert refused.value.field == "status"
    assert "only an opt-in clears it" in str(refused.value)
    assert chat(hg, LINE_A, BOB)["opted_out_at"] is not None


def test_the_cli_refuses_health_on_an_opted_out_chat_with_exit_2(
    settings: Settings, hg: Healthgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    hg.record_inbound(LINE_A, BOB, "STOP")
    for name, value in {
        "HEALTHGATE_DATA_DIR": str(settings.data_dir),
        "HEALTHGATE_POLICY_FILE": str(settings.policy_file),
        "HEALTHGATE_DATABASE_URL": str(settings.database_url),
    }.items():
        monkeypatch.setenv(name, value)

    result = CliRunner().invoke(cli_app, ["health", "chat", LINE_A, BOB, "HEALTHY"])

    assert result.exit_code == 2
    assert "only an opt-in clears it" in result.output


def test_a_stale_opted_out_report_after_an_opt_in_does_not_opt_out_again(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    # Given Bob's STOP at 9:00 and OPTIN at 9:02
    post(message_event(LINE_A, BOB, START, text="STOP"))
    clock.tick(minutes(5))
    post(message_event(LINE_A, BOB, START + minutes(2), text="OPTIN"))
    message_id = hg.enqueue(to=BOB, body="welcome back", line=LINE_A)

    # When a late event carries the chat's OPTED_OUT, dated at the STOP
    post(chat_health_event(LINE_A, "OPTED_OUT", START))
    hg.drain()

    # Then the later opt-in stands, and the message goes
    assert state(hg, message_id) == "sent"


def test_opted_out_at_is_the_time_the_recipient_said_stop(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory
) -> None:
    clock.tick(minutes(4))

    post(message_event(LINE_A, BOB, START + minutes(1), text="STOP"))

    assert chat(hg, LINE_A, BOB)["opted_out_at"] == (START + minutes(1)).isoformat()


@pytest.mark.parametrize("delivered_late", [False, True])
def test_stop_then_a_reply_carrying_healthy_ends_opted_out_however_fast_it_came(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory, delivered_late: bool
) -> None:
    # Given Bob's STOP at 9:00, and his reply at 9:01 whose event says the chat is HEALTHY
    stop = message_event(LINE_A, BOB, START, text="STOP")
    reply = message_event(
        LINE_A, BOB, START + minutes(1), text="ok", status="HEALTHY", status_at=START + minutes(1)
    )

    # When both arrive at once, or each as it happens
    if delivered_late:
        clock.tick(minutes(10))
        post(stop)
        post(reply)
    else:
        post(stop)
        clock.tick(minutes(1))
        post(reply)
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    hg.drain()

    # Then he is opted out either way: neither a reply nor a health report opts in
    assert state(hg, message_id) == "dropped"


@pytest.mark.parametrize("policy_text", [LINQ_MODE])
@pytest.mark.parametrize("delivered_late", [False, True])
def test_linq_mode_stop_then_reply_ends_the_same_however_fast_it_came(
    hg: Healthgate, post: Post, clock: FrozenDateTimeFactory, delivered_late: bool
) -> None:
    # Given the linq mode, where a later ordinary message opts back in
    stop = message_event(LINE_A, BOB, START, text="STOP")
    reply = message_event(LINE_A, BOB, START + minutes(1), text="sorry, keep them coming")

    # When the STOP and the reply arrive in either order
    clock.tick(minutes(2))
    for payload in (reply, stop) if delivered_late else (stop, reply):
        post(payload)
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    hg.drain()

    # Then the reply, later in event time, opted him back in either way
    assert state(hg, message_id) == "sent"


@pytest.mark.parametrize("policy_text", [LINQ_MODE])
def test_linq_mode_an_opt_in_on_another_chat_clears_every_chat_of_the_account(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # Given the linq mode and the account scope; Bob said STOP on line A
    hg.record_inbound(LINE_A, BOB, "STOP")

    # When he writes on line B later
    clock.tick(minutes(1))
    hg.record_inbound(LINE_B, BOB, "hello again")
    on_a = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    hg.drain()

    # Then chat A is no longer opted out either
    assert chat(hg, LINE_A, BOB)["opted_out_at"] is None
    assert state(hg, on_a) == "sent"


@pytest.mark.parametrize(
    ("text", "exact", "linq", "strict"),
    [
        ("STOP", "OPT_OUT", "OPT_OUT", "OPT_OUT"),
        (" STOP ", "REPLY", "OPT_OUT", "OPT_OUT"),
        ("stop", "REPLY", "REPLY", "OPT_OUT"),
        ("OPT OUT", "REPLY", "OPT_OUT", "OPT_OUT"),
        ("opt-out", "REPLY", "OPT_OUT", "OPT_OUT"),
        ("Opt Out", "REPLY", "OPT_OUT", "OPT_OUT"),
        ("optout", "REPLY", "OPT_OUT", "OPT_OUT"),
        ("OPTIN", "OPT_IN", "OPT_IN", "OPT_IN"),
        ("optin", "REPLY", "REPLY", "OPT_IN"),
        ("stop please", "REPLY", "REPLY", "REPLY"),
    ],
)
def test_strict_mode_stops_on_everything_the_looser_modes_stop_on(
    text: str, exact: str, linq: str, strict: str
) -> None:
    read = {
        mode: classify(text, OptOutPolicy(mode=mode)).value
        for mode in (OptOutMode.EXACT, OptOutMode.LINQ, OptOutMode.STRICT)
    }

    assert read == {OptOutMode.EXACT: exact, OptOutMode.LINQ: linq, OptOutMode.STRICT: strict}
    if read[OptOutMode.LINQ] == Inbound.OPT_OUT:
        assert read[OptOutMode.STRICT] == Inbound.OPT_OUT


# -- pauses: CRITICAL until a later HEALTHY ------------------------------------------------


def test_a_critical_chat_that_reports_at_risk_stays_paused_and_its_queue_keeps_order(
    hg: Healthgate, sends: Callable[[], list[Any]], clock: FrozenDateTimeFactory
) -> None:
    # Given a message held for a CRITICAL chat
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    first = hg.enqueue(to=BOB, body="first", line=LINE_A)
    hg.drain()

    # When the chat reports AT_RISK, and a newer message comes
    clock.tick(minutes(10))
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    second = hg.enqueue(to=BOB, body="second", line=LINE_A)
    hg.drain()

    # Then both wait: the pause holds until HEALTHY, and nothing overtakes the first
    assert (state(hg, first), state(hg, second)) == ("deferred", "deferred")
    assert sends() == []


def test_a_message_held_past_the_maximum_hold_expires_and_is_never_sent(
    hg: Healthgate, sends: Callable[[], list[Any]], clock: FrozenDateTimeFactory
) -> None:
    # Given a message held for a CRITICAL chat that then reported AT_RISK
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="late news", line=LINE_A)
    hg.drain()
    clock.tick(minutes(1))
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")

    # When the maximum hold (72 h) passes, then the chat is HEALTHY again
    clock.tick(timedelta(hours=72))
    hg.drain()
    clock.tick(minutes(1))
    hg.set_chat_health(LINE_A, BOB, "HEALTHY")
    hg.drain()

    # Then it expired, and was never sent
    assert state(hg, message_id) == "expired"
    assert codes(hg, message_id)[-1] == "max_hold"
    assert sends() == []


def test_holds_one_after_another_add_up_to_the_maximum_hold(
    hg: Healthgate, sends: Callable[[], list[Any]], clock: FrozenDateTimeFactory
) -> None:
    # Given a message held 40 h for its line, then released
    hg.set_line_health(LINE_A, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="x", line=LINE_A)
    hg.drain()
    clock.tick(timedelta(hours=40))
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    hg.set_line_health(LINE_A, "HEALTHY")
    hg.drain()
    assert codes(hg, message_id)[-1] == "chat_critical"

    # When its chat holds it 40 h more, then recovers
    clock.tick(timedelta(hours=40))
    hg.drain()
    clock.tick(minutes(1))
    hg.set_chat_health(LINE_A, BOB, "HEALTHY")
    hg.drain()

    # Then 80 h of holds passed the 72 h maximum: it expired, unsent
    assert state(hg, message_id) == "expired"
    assert sends() == []


def test_a_critical_line_that_reports_at_risk_stays_paused(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    hg.set_line_health(LINE_A, "CRITICAL")
    clock.tick(minutes(1))
    hg.set_line_health(LINE_A, "AT_RISK")
    message_id = hg.enqueue(to=BOB, body="x", line=LINE_A)

    hg.drain()

    assert line(hg, LINE_A)["reputation"] == "CRITICAL"
    assert codes(hg, message_id)[-1] == "line_critical"


def test_a_time_from_the_future_is_refused_and_changes_nothing(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput) as refused:
        hg.set_chat_health(LINE_A, BOB, "CRITICAL", updated_at=datetime(2999, 1, 1, tzinfo=UTC))
    hg.set_chat_health(LINE_A, BOB, "HEALTHY")

    assert refused.value.field == "updated_at"
    assert chat(hg, LINE_A, BOB)["health"] == "HEALTHY"


def test_a_late_signal_within_the_tolerance_is_taken(hg: Healthgate) -> None:
    ahead = START + minutes(4)  # a provider's clock a little ahead of ours

    hg.set_line_health(LINE_A, "AT_RISK", updated_at=ahead)

    assert line(hg, LINE_A)["reputation"] == "AT_RISK"


# -- lines --------------------------------------------------------------------------------


def test_a_waiting_for_a_line_message_does_not_expire_at_the_maximum_hold(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    hg.set_line_health(LINE_A, "CRITICAL")
    hg.set_line_health(LINE_B, "CRITICAL")
    message_id = hg.enqueue(to=BOB, body="waiting for a line")

    clock.tick(timedelta(hours=73))
    hg.drain()
    clock.tick(timedelta(hours=73))
    hg.drain()

    assert state(hg, message_id) == "deferred"
    assert codes(hg, message_id)[-1] == "no_line"


def test_a_new_recipient_on_a_line_turned_at_risk_opens_on_a_healthy_line(
    hg: Healthgate, sends: Callable[[], list[Any]]
) -> None:
    message_id = hg.enqueue(to=BOB, body="hello")
    routed = hg.explain(message_id)["line"]
    other = LINE_B if routed == LINE_A else LINE_A

    hg.set_line_health(routed, "AT_RISK")
    hg.drain()

    assert [s["line"] for s in sends()] == [other]
    assert "REROUTE" in [d["action"] for d in hg.explain(message_id)["decisions"]]


@pytest.mark.parametrize("policy_text", [POLICY + "\n[caps]\nnew_conversations_per_day = 1\n"])
def test_a_chat_the_recipient_started_keeps_their_line_and_is_no_new_conversation(
    hg: Healthgate, sends: Callable[[], list[Any]]
) -> None:
    # Given Bob wrote to line B, and line B has no new conversation left today
    hg.record_inbound(LINE_B, BOB, "hi, is this the shop?")
    hg.enqueue(to=CAROL, body="new conversation", line=LINE_B)
    hg.drain()

    # When the application answers him without naming a line
    answer_id = hg.enqueue(to=BOB, body="yes it is")
    hg.drain()

    # Then the answer goes on the line he wrote to, though its new conversations are used
    assert hg.explain(answer_id)["line"] == LINE_B
    assert state(hg, answer_id) == "sent"


# -- a line the provider flagged, or a send's answer flagged --------------------------


#: Line A on Linq, through the official SDK over a fake HTTP side.
LINQ_ONLY = f'[[lines]]\nnumber = "{LINE_A}"\nprovider = "linq"\n'


@pytest.mark.parametrize("policy_text", [LINQ_ONLY])
def test_a_line_flagged_by_a_2027_answer_comes_back_with_a_later_active(
    provider_client: Healthgate,
    linq: FakeProvider,
    post: Post,
    clock: FrozenDateTimeFactory,
) -> None:
    hg = provider_client
    linq.then(answer(403, {"error": {"code": 2027, "message": "line cannot send"}}))
    message_id = hg.enqueue(to=BOB, body="one", line=LINE_A)
    hg.drain()
    assert line(hg, LINE_A)["status"] == "FLAGGED"

    # A poll without a status (the SDK's phone numbers have none) does not lift it...
    clock.tick(minutes(5))
    listed = {"id": "pn-a", "phone_number": LINE_A, "reputation": {"status": "HEALTHY"}}
    linq.then(answer(200, {"phone_numbers": [listed]}))
    hg.poll()
    assert line(hg, LINE_A)["status"] == "FLAGGED"

    # ...a later ACTIVE from the provider does
    post(line_event(LINE_A, START + minutes(5), new_status="ACTIVE"))
    hg.drain()

    assert line(hg, LINE_A)["status"] == "ACTIVE"
    assert state(hg, message_id) == "sent"


@pytest.mark.parametrize("policy_text", [LINQ_ONLY])
def test_a_line_flagged_by_a_2027_answer_sends_one_probe_and_recovers_when_it_is_accepted(
    provider_client: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    # Given a line a 2027 answer flagged, with three messages waiting
    hg = provider_client
    linq.then(answer(403, {"error": {"code": 2027}}))
    recipients = (BOB, CAROL, "+14155550125")
    # Bodies of different lengths: the fake Linq names a new chat by its request's size.
    ids = [hg.enqueue(to=to, body="x" * n, line=LINE_A) for n, to in enumerate(recipients, 1)]
    hg.drain()
    assert [state(hg, m) for m in ids] == ["deferred"] * 3

    # When 10 minutes pass, nothing is tried; after 30, one probe, refused again
    clock.tick(minutes(10))
    hg.drain()
    assert len(linq.requests) == 1
    clock.tick(minutes(21))
    linq.then(answer(403, {"error": {"code": 2027}}))
    hg.set_line_health(LINE_A, "HEALTHY")  # a reputation report releases the holds
    hg.drain()
    assert len(linq.requests) == 2
    assert line(hg, LINE_A)["status"] == "FLAGGED"

    # 30 minutes after that refusal, the next probe is accepted: the line sends again
    clock.tick(minutes(31))
    hg.drain()
    clock.tick(minutes(1))
    hg.drain()

    assert line(hg, LINE_A)["status"] == "ACTIVE"
    assert [state(hg, m) for m in ids] == ["sent"] * 3
    assert len(linq.requests) == 5


@pytest.mark.parametrize("policy_text", [LINQ_ONLY])
def test_a_person_lifts_the_flag_a_2027_answer_put_on_the_line(
    provider_client: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    hg = provider_client
    linq.then(answer(403, {"error": {"code": 2027}}))
    message_id = hg.enqueue(to=BOB, body="one", line=LINE_A)
    hg.drain()

    clock.tick(minutes(30))
    hg.set_line_health(LINE_A, "ACTIVE")
    hg.drain()

    assert state(hg, message_id) == "sent"


@pytest.mark.parametrize("policy_text", [LINQ_ONLY])
def test_linq_409_no_eligible_line_is_retried_not_failed(
    provider_client: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    hg = provider_client
    linq.then(answer(409, {"error": {"code": 3001, "message": "no eligible line"}}))
    message_id = hg.enqueue(to=BOB, body="one", line=LINE_A)

    hg.drain()
    assert (state(hg, message_id), codes(hg, message_id)[-1]) == ("throttled", "provider_no_line")
    clock.tick(timedelta(seconds=30))
    hg.drain()

    assert state(hg, message_id) == "sent"


# -- webhooks: what healthgate cannot act on is answered 200 --------------------------


def test_an_inbound_stop_without_owner_handle_is_found_by_linq_s_chat_id(
    hg: Healthgate, post: Post, sends: Callable[[], list[Any]]
) -> None:
    # Given a chat healthgate knows by Linq's id
    post(message_event(LINE_A, BOB, START, text="hello", chat_id="chat_known"))
    message_id = hg.enqueue(to=BOB, body="hi", line=LINE_A)

    # When Bob's STOP comes without owner_handle (optional in the SDK)
    payload = message_event(LINE_A, BOB, START, text="STOP", chat_id="chat_known")
    del payload["data"]["chat"]["owner_handle"]
    response = post(payload)
    hg.drain()

    # Then it is applied through the chat's id
    assert response.status_code == 200, response.text
    assert state(hg, message_id) == "dropped"
    assert sends() == []


def test_an_inbound_from_an_email_address_is_answered_200_ignored(
    hg: Healthgate, post: Post
) -> None:
    response = post(message_event(LINE_A, "bob@example.com", START, text="STOP"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"


def test_an_event_that_failed_to_parse_keeps_its_type(hg: Healthgate, post: Post) -> None:
    payload = message_event(LINE_A, BOB, START, text="hi", status="SICK")

    post(payload)

    with hg.runtime.sessions() as session:
        [event] = listing.events(session, None, 10)
    assert (event["event_type"], event["outcome"]) == ("message.received", "rejected")
