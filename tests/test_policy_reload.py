"""Policy changes take effect: each reload is logged with what changed and the new
fingerprint, messages held under a changed rule are looked at again once (whichever
worker sees the change first), and each worker's policy is recorded and listed."""

from __future__ import annotations

import json
import logging
import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from freezegun.api import FrozenDateTimeFactory
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from policies.changes import GOVERNS, affected, diff, fingerprint, normalised
from policies.codes import CAP_CODES, Code
from policies.config import CAP_MAXIMA, Policy, load_policy, parse_policy
from scheduler import constants
from scheduler.cli import app as cli_app
from scheduler.client import Healthgate
from scheduler.runtime import PolicySource, utcnow
from scheduler.settings import Settings
from scheduler.store.policy_state import (
    Applied,
    applied,
    record_first,
    record_worker,
    take_change,
    workers,
)
from tasks.application import create_app
from tests.conftest import LINE_A, LINE_B, START

LINE_C = "+14155550102"
ALICE, BOB, CAROL, DAVE, ERIN = (f"+1415555020{i}" for i in range(5))


def policy_file(
    *,
    day_cap_a: int = 1,
    unanswered: int = 1,
    third_line: bool = False,
) -> str:
    """Line A sends one message a day, line B one a day to each recipient."""
    text = f"""
[[lines]]
number = "{LINE_A}"
caps = {{ sends_per_day = {day_cap_a} }}

[[lines]]
number = "{LINE_B}"
caps = {{ sends_per_recipient_per_day = 1 }}

[chat]
at_risk_max_unanswered = {unanswered}
"""
    if third_line:
        text += f'\n[[lines]]\nnumber = "{LINE_C}"\n'
    return text


@pytest.fixture
def policy_text() -> str:
    return policy_file()


_mtime = iter(range(1_000_000_000, 10**19, 1_000_000_000))


def rewrite(path: Path, text: str) -> None:
    """Replace the policy file; each write a second newer than the last, as an editor's."""
    path.write_text(text, encoding="utf-8")
    stamp = next(_mtime)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def workers_pair(settings: Settings, hg: Healthgate) -> tuple[Celery, Celery]:
    """Two workers, each with its own runtime and policy, running tasks where they are
    sent (a tick's dispatches run inside it)."""
    rewrite(settings.policy_file, settings.policy_file.read_text())
    apps = (create_app(settings), create_app(settings))
    for each in apps:
        each.conf.task_always_eager = True
    return apps


def tick(worker: Celery) -> None:
    """Beat's tick, as the worker that receives it runs it."""
    worker.tasks[constants.TICK_TASK].apply()


def decisions(hg: Healthgate, message_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hg.explain(message_id)["decisions"]
    return found


def policy_releases(hg: Healthgate, ids: list[str]) -> dict[str, list[str]]:
    return {
        i: [d["reason"] for d in decisions(hg, i) if d["code"] == Code.RELEASE_POLICY] for i in ids
    }


def test_a_changed_policy_releases_exactly_the_holds_it_changed_once_among_workers(
    hg: Healthgate,
    settings: Settings,
    workers_pair: tuple[Celery, Celery],
    clock: FrozenDateTimeFactory,
) -> None:
    # Given messages held on line A's day cap, on an AT_RISK chat, on line B's
    # per-recipient day cap and on a CRITICAL chat, each for hours
    first, second = workers_pair
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    hg.set_chat_health(LINE_B, DAVE, "CRITICAL")
    sent = [
        hg.enqueue(to=BOB, body="your order shipped", line=LINE_A),
        hg.enqueue(to=CAROL, body="welcome", line=LINE_B),
    ]
    tick(first)
    capped = hg.enqueue(to=ERIN, body="see you soon", line=LINE_A)
    at_risk = hg.enqueue(to=BOB, body="it arrives today", line=LINE_A)
    per_recipient = hg.enqueue(to=CAROL, body="a question", line=LINE_B)
    critical = hg.enqueue(to=DAVE, body="a reminder", line=LINE_B)
    clock.tick(1)
    tick(first)
    held = [at_risk, capped, per_recipient, critical]
    assert [hg.explain(i)["state"] for i in sent] == ["sent"] * 2
    assert [decisions(hg, i)[-1]["code"] for i in held] == [
        "chat_at_risk",
        "cap_sends_per_day",
        "cap_sends_per_recipient_per_day",
        "chat_critical",
    ]
    before = fingerprint(normalised(load_policy(settings.policy_file)))

    # When line A's day cap is raised, and both workers tick
    rewrite(settings.policy_file, policy_file(day_cap_a=5))
    clock.tick(1)
    tick(first)
    tick(second)

    # Then the message held on that cap is looked at again at once (and sent), once,
    # with a decision naming the change and both fingerprints; the others stay held
    after = fingerprint(normalised(load_policy(settings.policy_file)))
    releases = policy_releases(hg, held)
    assert releases == {
        at_risk: [],
        capped: [f"policy {after} (was {before}) changed lines.{LINE_A}.caps.sends_per_day"],
        per_recipient: [],
        critical: [],
    }
    assert [hg.explain(i)["state"] for i in held] == ["throttled", "sent", "throttled", "deferred"]

    # When the AT_RISK throttle is raised to two unanswered messages, and both tick
    rewrite(settings.policy_file, policy_file(day_cap_a=5, unanswered=2))
    clock.tick(1)
    tick(second)
    tick(first)

    # Then only the AT_RISK chat's held message is looked at again, once, and goes
    releases = policy_releases(hg, held)
    assert [len(releases[i]) for i in held] == [1, 1, 0, 0]
    assert "changed chat.at_risk_max_unanswered" in releases[at_risk][0]
    assert [hg.explain(i)["state"] for i in held] == ["sent", "sent", "throttled", "deferred"]

    # And each worker ran the new policy, as recorded
    with hg.runtime.reads() as session:
        seen = workers(session, START + timedelta(seconds=3))
    final = fingerprint(normalised(load_policy(settings.policy_file)))
    assert {w.fingerprint for w in seen} == {final}
    assert all(w.applied and not w.stale for w in seen)


@pytest.mark.parametrize("policy_text", [f'[[lines]]\nnumber = "{LINE_A}"\n'])
def test_a_line_added_releases_the_messages_waiting_for_a_line_and_no_other(
    hg: Healthgate,
    settings: Settings,
    workers_pair: tuple[Celery, Celery],
    clock: FrozenDateTimeFactory,
) -> None:
    # Given the only line CRITICAL: a new recipient waits for a line, a message pinned
    # to the line waits for it to recover
    first, second = workers_pair
    hg.set_line_health(LINE_A, "CRITICAL")
    waiting = hg.enqueue(to=ALICE, body="hi")
    pinned = hg.enqueue(to=BOB, body="hi", line=LINE_A)
    tick(first)
    assert decisions(hg, waiting)[-1]["code"] == "no_line"
    assert decisions(hg, pinned)[-1]["code"] == "line_critical"

    # When a second line is declared and both workers tick
    rewrite(
        settings.policy_file, f'[[lines]]\nnumber = "{LINE_A}"\n[[lines]]\nnumber = "{LINE_B}"\n'
    )
    clock.tick(1)
    tick(second)
    tick(first)

    # Then the waiting message is looked at again once and goes on the new line; the
    # pinned one still waits for its own
    releases = policy_releases(hg, [waiting, pinned])
    assert [len(releases[waiting]), len(releases[pinned])] == [1, 0]
    assert f"changed lines.{LINE_B}" in releases[waiting][0]
    assert hg.explain(waiting)["state"] == "sent"
    assert hg.explain(waiting)["line"] == LINE_B
    assert hg.explain(pinned)["state"] == "deferred"


def test_a_reverted_change_and_a_worker_yet_to_reload_release_nothing_twice(
    hg: Healthgate,
    settings: Settings,
    workers_pair: tuple[Celery, Celery],
    clock: FrozenDateTimeFactory,
) -> None:
    # Given a message held on line A's day cap, and the cap raised then lowered again
    # before any tick
    first, second = workers_pair
    hg.enqueue(to=ALICE, body="a", line=LINE_A)
    tick(first)
    capped = hg.enqueue(to=ERIN, body="a2", line=LINE_A)
    clock.tick(1)
    tick(first)
    rewrite(settings.policy_file, policy_file(day_cap_a=5))
    rewrite(settings.policy_file, policy_file(day_cap_a=1))

    # When both workers tick
    clock.tick(1)
    tick(first)
    tick(second)

    # Then nothing changed in effect, so nothing was released
    assert policy_releases(hg, [capped]) == {capped: []}
    assert hg.explain(capped)["state"] == "throttled"


def test_each_reload_logs_what_changed_and_the_new_fingerprint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker's policy from a file
    path = tmp_path / "healthgate.toml"
    rewrite(path, policy_file())
    source = PolicySource(path)
    old = source.loaded().fingerprint
    long_word = "W" * 150

    # When the file changes a cap, the throttle and a keyword, and the worker reads it
    rewrite(
        path,
        policy_file(day_cap_a=5, unanswered=2)
        + f'[opt_out]\nopt_out_keywords = ["STOP", "{long_word}"]\n',
    )
    with caplog.at_level(logging.INFO, logger="scheduler.runtime"):
        new = source.loaded().fingerprint
        source.loaded()  # unchanged since: nothing logged

    # Then one line names each key, old → new (values cut to 100 characters), and the
    # fingerprints
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert f"fingerprint {new} (was {old})" in message
    assert f"lines.{LINE_A}.caps.sends_per_day 1 → 5" in message
    assert "chat.at_risk_max_unanswered 1 → 2" in message
    assert "opt_out.opt_out_keywords [" in message
    assert long_word not in message
    assert "W" * 80 in message


def test_a_file_that_fails_to_load_keeps_the_policy_and_logs_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "healthgate.toml"
    rewrite(path, policy_file())
    source = PolicySource(path)
    before = source.loaded()
    rewrite(path, policy_file() + "[chat]\nat_risk_max_unanswered = 0\n")
    with caplog.at_level(logging.INFO, logger="scheduler.runtime"):
        assert source.loaded() is before
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "\n" not in record.getMessage()
    assert f"fingerprint {before.fingerprint} kept" in record.getMessage()


EQUIVALENT = [
    # Key order, comments, a default written out, the lines in another order.
    f"""
# our lines
[chat]
at_risk_max_unanswered = 1  # the default

[[lines]]
caps = {{ sends_per_recipient_per_day = 1 }}
number = "{LINE_B}"

[[lines]]
provider = "log"
caps = {{ sends_per_day = 1 }}
number = "{LINE_A}"
""",
]


def test_the_fingerprint_is_the_same_for_equivalent_files_and_differs_otherwise(
    tmp_path: Path,
) -> None:
    def of(text: str) -> str:
        path = tmp_path / "p.toml"
        path.write_text(text, encoding="utf-8")
        return fingerprint(normalised(load_policy(path)))

    base = of(policy_file())
    assert [of(text) for text in EQUIVALENT] == [base]
    assert of(policy_file(day_cap_a=2)) != base
    assert of(policy_file(third_line=True)) != base
    assert len(base) == 12
    assert int(base, 16) >= 0


def test_every_policy_key_is_mapped_to_the_holds_it_governs() -> None:
    # Given every key of a policy outside the lines and the caps (read line by line) and
    # the categories (whose windows govern the quiet-hours holds, whatever the key)
    normal = normalised(parse_policy(tomllib.loads(policy_file()), "p.toml"))
    keys = {
        f"{section}.{key}"
        for section, table in normal.items()
        if section not in ("lines", "caps", "categories")
        for key in table
    }
    # Then each is in the table, so a key added later must say what it governs
    assert keys == set(GOVERNS)


@given(
    defaults=st.fixed_dictionaries({cap: st.integers(1, 5) for cap in CAP_MAXIMA}),
    old_own=st.dictionaries(st.sampled_from(sorted(CAP_MAXIMA)), st.integers(1, 5)),
    new_own=st.dictionaries(st.sampled_from(sorted(CAP_MAXIMA)), st.integers(1, 5)),
    new_defaults=st.dictionaries(st.sampled_from(sorted(CAP_MAXIMA)), st.integers(1, 5)),
)
def test_a_cap_change_releases_the_caps_whose_value_on_the_line_changed(
    defaults: dict[str, int],
    old_own: dict[str, int],
    new_own: dict[str, int],
    new_defaults: dict[str, int],
) -> None:
    # Given two policies of one line, each with its own caps over the defaults
    def policy(own: dict[str, int], caps: dict[str, int]) -> Policy:
        return Policy.model_validate({"lines": [{"number": LINE_A, "caps": own}], "caps": caps})

    old = normalised(policy(old_own, defaults))
    new = normalised(policy(new_own, {**defaults, **new_defaults}))

    # Then exactly the caps whose value as applied on the line changed are released
    # there (the model: the line's own value, else the default)
    def applied(own: dict[str, int], caps: dict[str, int], cap: str) -> int:
        return own.get(cap, caps[cap])

    expected = {
        CAP_CODES[cap]
        for cap in CAP_MAXIMA
        if applied(old_own, defaults, cap) != applied(new_own, {**defaults, **new_defaults}, cap)
    }
    found = affected(old, new)
    assert all(a.lines == frozenset({LINE_A}) for a in found)
    assert set().union(*(a.codes for a in found)) == expected
    assert (diff(old, new) == []) == (fingerprint(old) == fingerprint(new))


def test_policy_show_prints_the_policy_in_force_with_defaults_and_its_fingerprint(
    tmp_path: Path,
) -> None:
    # Given a policy file that sets two keys
    path = tmp_path / "healthgate.toml"
    path.write_text(policy_file(), encoding="utf-8")
    expected = fingerprint(normalised(load_policy(path)))
    runner = CliRunner()

    # When it is shown, as TOML and as JSON
    shown = runner.invoke(cli_app, ["policy", "show", str(path)])
    as_json = runner.invoke(cli_app, ["policy", "show", str(path), "--json"])

    # Then the TOML names the fingerprint, holds the defaults and loads back to the same
    # policy; the JSON holds both
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"# fingerprint {expected}\n")
    assert "sends_per_minute = 20" in shown.output
    assert 'mode = "exact"' in shown.output
    again = tmp_path / "again.toml"
    again.write_text(shown.output, encoding="utf-8")
    assert fingerprint(normalised(load_policy(again))) == expected
    data = json.loads(as_json.output)
    assert data["fingerprint"] == expected
    assert data["policy"]["lines"][LINE_A]["caps"]["sends_per_day"] == 1
    assert data["policy"]["chat"]["critical_max_hold_hours"] == 72


def test_workers_are_listed_with_their_fingerprint_and_stale_ones_marked(
    hg: Healthgate,
    settings: Settings,
    workers_pair: tuple[Celery, Celery],
    clock: FrozenDateTimeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker that ticked now, and one last seen a minute ago on an older policy
    first, _ = workers_pair
    with hg.runtime.sessions.begin() as session:
        record_worker(session, "celery@old-host/7", "0123456789ab", START - timedelta(minutes=1))
    tick(first)
    mine = fingerprint(normalised(load_policy(settings.policy_file)))

    # When the workers are listed, in the store and by the command
    with hg.runtime.reads() as session:
        seen = workers(session, START)
    for name, value in (
        ("DATABASE_URL", settings.database_url or ""),
        ("DATA_DIR", str(settings.data_dir)),
        ("POLICY_FILE", str(settings.policy_file)),
        ("BROKER_URL", "memory://"),
    ):
        monkeypatch.setenv(f"HEALTHGATE_{name}", value)
    listed = CliRunner().invoke(cli_app, ["workers", "--json"])

    # Then the ticking worker runs the applied policy and is fresh; the other is stale
    assert [(w.fingerprint, w.stale, w.applied) for w in seen] == [
        (mine, False, True),
        ("0123456789ab", True, False),
    ]
    assert seen[0].name.endswith(f"/{os.getpid()}")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert data["applied"] == mine
    assert [w["name"] for w in data["workers"]] == [seen[0].name, "celery@old-host/7"]
    assert [w["stale"] for w in data["workers"]] == [False, True]


def test_of_two_workers_that_read_the_same_applied_policy_one_takes_the_change(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # Given a policy applied, and two workers that both read it before either moved it
    old = Applied("aaaaaaaaaaaa", {"chat": {"at_risk_max_unanswered": 1}}, 1)
    new = Applied("bbbbbbbbbbbb", {"chat": {"at_risk_max_unanswered": 2}}, 2)
    with hg.runtime.sessions.begin() as session:
        assert record_first(session, old, START, "w0")
        assert not record_first(session, new, START, "w0")
        read = applied(session)
    assert read == old

    # When each tries to move it to the new policy, one after the other
    with hg.runtime.sessions.begin() as session:
        first = take_change(session, old, new, START, "w1")
    with hg.runtime.sessions.begin() as session:
        second = take_change(session, old, new, START, "w2")
        older = take_change(session, new, old._replace(file_mtime_ns=1), START, "w2")

    # Then only the first does; an older file never moves it back
    assert (first, second, older) == (True, False, False)
    with hg.runtime.reads() as session:
        assert applied(session) == new


def test_status_shows_the_applied_policy_and_each_workers_fingerprint(
    hg: Healthgate, settings: Settings, clock: FrozenDateTimeFactory
) -> None:
    # Given a worker that recorded the policy it runs
    fingerprint = hg.runtime.policies.loaded().fingerprint
    with hg.runtime.sessions.begin() as session:
        record_worker(session, "celery@host/1", fingerprint, utcnow())

    # When status is asked, Then it names the worker and what it runs
    data = hg.status()
    assert [(w["name"], w["fingerprint"]) for w in data["workers"]] == [
        ("celery@host/1", fingerprint)
    ]
    assert "applied" in data["policy"]
    env = {
        "HEALTHGATE_DATABASE_URL": settings.database_url or "",
        "HEALTHGATE_DATA_DIR": str(settings.data_dir),
        "HEALTHGATE_POLICY_FILE": str(settings.policy_file),
        "HEALTHGATE_BROKER_URL": "memory://",
    }
    result = CliRunner().invoke(cli_app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert "celery@host/1" in result.output
    assert fingerprint in result.output


def test_the_purge_forgets_workers_gone_longer_than_the_retention(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    # Given a worker seen 40 days ago and one seen now
    with hg.runtime.sessions.begin() as session:
        record_worker(session, "celery@gone/1", "0123456789ab", START - timedelta(days=40))
        record_worker(session, "celery@here/2", "0123456789ab", START)

    # When the daily purge runs with the default 30 days
    purged = hg.purge()

    # Then only the gone one is forgotten
    assert purged.workers == 1
    with hg.runtime.reads() as session:
        assert [w.name for w in workers(session, START)] == ["celery@here/2"]


def test_a_deployment_that_only_drains_applies_a_policy_change_too(
    hg: Healthgate, settings: Settings, clock: FrozenDateTimeFactory
) -> None:
    # Given a message held on line A's day cap by a drain (no worker, no tick)
    rewrite(settings.policy_file, settings.policy_file.read_text())
    first = hg.enqueue(to=BOB, body="your order shipped", line=LINE_A)
    hg.drain()
    held = hg.enqueue(to=ERIN, body="see you soon", line=LINE_A)
    clock.tick(1)
    hg.drain()
    assert [hg.explain(i)["state"] for i in (first, held)] == ["sent", "throttled"]

    # When the day cap is raised and the next drain runs (cron, a script)
    rewrite(settings.policy_file, policy_file(day_cap_a=10))
    clock.tick(1)
    hg.drain()

    # Then the held message was looked at again under the new policy, and sent
    assert len(policy_releases(hg, [held])[held]) == 1
    assert hg.explain(held)["state"] == "sent"
