"""The policy file cannot switch opt-outs off, lift a cap, leak a key, or crash a reload."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from policies.config import (
    CAP_MAXIMA,
    MAX_FILE_BYTES,
    Caps,
    CapsOverride,
    LineConfig,
    Policy,
    load_policy,
    parse_policy,
)
from policies.errors import HealthgateError, InvalidInput, PolicyFileError
from scheduler.providers.dialog360 import env_keys
from scheduler.runtime import PolicySource

LINE = "+14155550100"
LINE_FILE = f'[[lines]]\nnumber = "{LINE}"\n'
DEEP = 100_000


def refused(tmp_path: Path, text: str) -> PolicyFileError:
    """The error of loading ``text`` as a policy file (the test fails if it loads)."""
    path = tmp_path / "healthgate.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert caught.value.path == str(path)
    return caught.value


# Keywords


def test_an_empty_opt_out_keyword_list_is_refused(tmp_path: Path) -> None:
    # Given a policy whose opt-out list is empty, When it is loaded
    error = refused(tmp_path, LINE_FILE + "[opt_out]\nopt_out_keywords = []\n")

    # Then it is refused naming the key and the value, rather than ignoring every STOP
    assert (error.key, error.problem) == (
        "opt_out.opt_out_keywords",
        "needs at least one keyword (got []): none turns opt-outs off",
    )
    # And an empty opt-in list still loads: then no keyword clears an opt-out
    path = tmp_path / "no_opt_in.toml"
    path.write_text(LINE_FILE + "[opt_out]\nopt_in_keywords = []\n", encoding="utf-8")
    assert load_policy(path).opt_out.opt_in_keywords == ()


@pytest.mark.parametrize("keywords", ["opt_out_keywords", "opt_in_keywords"])
@pytest.mark.parametrize("word", ["", " ", "\t\n", "\u00a0"])
def test_an_empty_or_blank_keyword_is_refused_naming_it(
    tmp_path: Path, keywords: str, word: str
) -> None:
    # Given a keyword list whose second keyword is empty or only whitespace
    text = LINE_FILE + f'[opt_out]\n{keywords} = ["STOP", {json.dumps(word)}]\n'

    # When it is loaded, Then it is refused naming that keyword and its value: an empty
    # keyword matches every message that has no text (a photo would opt the sender in)
    error = refused(tmp_path, text)
    assert (error.key, error.problem) == (
        f"opt_out.{keywords}[1]",
        f"is empty or only whitespace: it would match messages with no text (got {word!r})",
    )


@pytest.mark.parametrize(
    ("word", "problem"),
    [
        ("\u200b", "holds an invisible or control character: nobody can type it"),
        ("\ufeff", "holds an invisible or control character: nobody can type it"),
        ("\u0000", "holds an invisible or control character: nobody can type it"),
        ("ST\u200bOP", "holds an invisible or control character: nobody can type it"),
        ("...", "has no letter or digit: it is not a word a recipient types"),
    ],
)
def test_a_keyword_nobody_can_type_is_refused(tmp_path: Path, word: str, problem: str) -> None:
    # Given an opt-out list whose only keyword no recipient can type: opt-outs would be
    # off while the list looks full
    text = LINE_FILE + f"[opt_out]\nopt_out_keywords = [{json.dumps(word)}]\n"

    # When it is loaded, Then it is refused naming the keyword
    error = refused(tmp_path, text)
    assert (error.key, error.problem) == (
        "opt_out.opt_out_keywords[0]",
        f"{problem} (got {word!r})",
    )


def test_a_keyword_in_both_lists_is_refused(tmp_path: Path) -> None:
    text = LINE_FILE + '[opt_out]\nopt_out_keywords = ["STOP"]\nopt_in_keywords = ["stop"]\n'

    error = refused(tmp_path, text)
    assert error.key == "opt_out.opt_in_keywords"
    assert error.problem.startswith("'stop' is an opt-out keyword too")


@pytest.mark.parametrize("word", [" STOP", "STOP ", "OPTIN\n"])
def test_a_keyword_with_spaces_around_it_is_refused(tmp_path: Path, word: str) -> None:
    # Given a keyword the linq and strict modes could never match (they trim the text)
    text = LINE_FILE + f'[opt_out]\nopt_out_keywords = ["QUIT", {json.dumps(word)}]\n'

    # When it is loaded, Then it is refused naming it
    error = refused(tmp_path, text)
    assert (error.key, error.problem) == (
        "opt_out.opt_out_keywords[1]",
        f"has spaces around it, which the linq and strict modes never match (got {word!r})",
    )


# Upper bounds


@pytest.mark.parametrize("cap", sorted(Caps.model_fields))
def test_a_cap_above_its_bound_is_refused_naming_the_key_and_the_value(
    tmp_path: Path, cap: str
) -> None:
    # Given a cap of the model (one added later is checked too), set just above its
    # bound, in [caps] and as a line's override
    assert sorted(CapsOverride.model_fields) == sorted(Caps.model_fields)
    most = CAP_MAXIMA[cap]
    defaults = LINE_FILE + f"[caps]\n{cap} = {most + 1}\n"
    override = LINE_FILE + f"caps = {{ {cap} = {most + 1} }}\n"

    # When each is loaded, Then each is refused naming the file, the key and the value
    for text, key in [(defaults, f"caps.{cap}"), (override, f"lines[0].caps.{cap}")]:
        error = refused(tmp_path, text)
        assert str(error) == (
            f"{error.path}: {key}: Input should be less than or equal to {most} (got {most + 1})"
        )
    # And the bound itself loads
    (tmp_path / "at_bound.toml").write_text(LINE_FILE + f"[caps]\n{cap} = {most}\n")
    assert getattr(load_policy(tmp_path / "at_bound.toml").caps_for(LINE), cap) == most


@pytest.mark.parametrize(
    ("section", "key", "most", "above"),
    [
        ("chat", "at_risk_max_unanswered", "20", "21"),
        ("chat", "at_risk_window_hours", "720", "721"),
        ("chat", "critical_max_hold_hours", "720", "720.5"),
        ("content", "at_risk_repeat_window_hours", "720", "1000"),
        ("content", "same_body_max_recipients_per_hour", "100000", "100001"),
        ("line", "recovery_ramp_hours", "720", "8760"),
        ("line", "probe_after_minutes", "1440", "1441"),
        ("signals", "time_tolerance_seconds", "3600", "86400"),
        ("dispatch", "max_attempts", "1000", "1001"),
        ("dispatch", "retry_base_seconds", "86400", "86401"),
        ("dispatch", "retry_max_seconds", "86400", "604800"),
    ],
)
def test_a_hold_window_or_count_above_its_bound_is_refused(
    tmp_path: Path, section: str, key: str, most: str, above: str
) -> None:
    # Given a hold, window, probe delay or count set above its bound, When it is loaded
    error = refused(tmp_path, LINE_FILE + f"[{section}]\n{key} = {above}\n")

    # Then it is refused naming the file, the key, the bound and the value
    assert (error.key, error.problem) == (
        f"{section}.{key}",
        f"Input should be less than or equal to {most} (got {above})",
    )


# The 360dialog key variable


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (
            "HEALTHGATE_LINQ_API_KEY",
            "must name a variable HEALTHGATE_D360_KEY_<something> "
            "(got 'HEALTHGATE_LINQ_API_KEY'): only those are sent to 360dialog",
        ),
        (
            "HEALTHGATE_D360_KEY_",
            "must name a variable HEALTHGATE_D360_KEY_<something> "
            "(got 'HEALTHGATE_D360_KEY_'): only those are sent to 360dialog",
        ),
        # Without the prefix the value is not shown: it may be a key pasted in.
        (
            "D360_KEY_SUPPORT",
            "must name a variable HEALTHGATE_D360_KEY_<something>: only those "
            "are sent to 360dialog",
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            "must name a variable HEALTHGATE_D360_KEY_<something>: only "
            "those are sent to 360dialog",
        ),
        (
            "healthgate_d360_key_support",
            "must name a variable HEALTHGATE_D360_KEY_<something>: "
            "only those are sent to 360dialog",
        ),
    ],
)
def test_api_key_env_outside_the_360dialog_prefix_is_refused(
    tmp_path: Path, name: str, problem: str
) -> None:
    # Given a 360dialog line naming a variable that is not a 360dialog key's
    text = LINE_FILE + f'provider = "360dialog"\napi_key_env = "{name}"\n'

    # When it is loaded, Then it is refused, so that key is never sent to 360dialog
    error = refused(tmp_path, text)
    assert (error.key, error.problem) == ("lines[0].api_key_env", problem)
    # And a name with the prefix loads
    path = tmp_path / "prefixed.toml"
    path.write_text(LINE_FILE + 'provider = "360dialog"\napi_key_env = "HEALTHGATE_D360_KEY_2"\n')
    assert load_policy(path).lines[0].api_key_env == "HEALTHGATE_D360_KEY_2"


def test_a_policy_built_in_code_cannot_send_the_linq_key_to_360dialog() -> None:
    # Given a policy built without validation, naming the Linq key's variable
    line = LineConfig.model_construct(
        number=LINE, provider="360dialog", api_key_env="HEALTHGATE_LINQ_API_KEY"
    )
    policy = Policy.model_construct(lines=(line,))
    keys = env_keys(lambda: policy, {"HEALTHGATE_LINQ_API_KEY": "linq-secret"})

    # When the 360dialog provider asks for the line's key, Then it gets none
    with pytest.raises(HealthgateError) as caught:
        keys(LINE)
    assert "linq-secret" not in str(caught.value)
    assert "HEALTHGATE_D360_KEY_" in str(caught.value)


# Every way a file can fail is a PolicyFileError


def deep_array() -> str:
    return LINE_FILE + "[opt_out]\nopt_out_keywords = " + "[" * DEEP + "]" * DEEP + "\n"


def deep_inline_table() -> str:
    return LINE_FILE + "[chat]\nat_risk_window_hours = " + "{a = " * DEEP + "1" + "}" * DEEP


def deep_table() -> str:
    return f"[[lines]]\n[lines.number.{'.'.join(['a'] * DEEP)}]\n"


def deep_dotted_key() -> str:
    return LINE_FILE + "[chat]\n" + ".".join(["a"] * DEEP) + " = 1\n"


def deep_inline_dotted_key() -> str:
    return LINE_FILE + "caps = { sends_per_day = 1, " + ".".join(['"a"'] * DEEP) + " = 1 }\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            deep_array,
            "is not valid TOML (arrays or inline tables nested too deeply)",
            id="array",
        ),
        pytest.param(
            deep_inline_table,
            "is not valid TOML (arrays or inline tables nested too deeply)",
            id="inline_table",
        ),
        pytest.param(deep_table, "line 2: a key of over 16 dotted parts", id="table"),
        pytest.param(deep_dotted_key, "line 4: a key of over 16 dotted parts", id="dotted_key"),
        pytest.param(
            deep_inline_dotted_key, "line 3: a key of over 16 dotted parts", id="inline_key"
        ),
    ],
)
def test_a_policy_nested_100_000_deep_is_refused_naming_the_file(
    tmp_path: Path, text: Callable[[], str], problem: str
) -> None:
    # Given a TOML file nesting arrays or tables 100,000 deep, When it is loaded
    started = time.perf_counter()
    error = refused(tmp_path, text())

    # Then it is a PolicyFileError naming the file, not a RecursionError, and it comes
    # at once (tomllib alone takes minutes over a key of 100,000 parts)
    assert (error.key, error.problem) == ("", problem)
    assert time.perf_counter() - started < 5


def test_tables_nested_past_the_depth_limit_are_refused_naming_the_key(tmp_path: Path) -> None:
    # Given a header of 16 parts holding an inline table two deep: 19 levels in all
    header = "[chat." + ".".join("abcdefghijklmno") + "]\n"

    # When it is loaded, Then the key where it passes 16 levels is named
    error = refused(tmp_path, LINE_FILE + header + "x = { y = { z = 1 } }\n")
    assert (error.key, error.problem) == (
        "chat." + ".".join("abcdefghijklmno") + ".x",
        "nests tables or arrays over 16 deep",
    )


def test_data_nested_100_000_deep_is_refused_naming_the_key() -> None:
    # Given parsed data nesting a line's number 100,000 deep (as code may hand it over)
    number: dict[str, object] = {}
    inner = number
    for _ in range(DEEP):
        inner["a"] = inner = {}

    # When it is validated, Then the key is named, not a RecursionError raised
    with pytest.raises(PolicyFileError) as caught:
        parse_policy({"lines": [{"number": number}]}, "healthgate.toml")
    assert (caught.value.key, caught.value.problem) == (
        "lines[0].number" + ".a" * 14,
        "nests tables or arrays over 16 deep",
    )


def test_an_integer_longer_than_python_reads_is_refused_naming_the_file(tmp_path: Path) -> None:
    error = refused(tmp_path, LINE_FILE + "[caps]\nsends_per_day = " + "9" * 5000 + "\n")

    assert error.key == ""
    assert error.problem.startswith("is not valid TOML (Exceeds the limit (4300 digits)")
    assert len(str(error)) < len(error.path) + 160


def test_a_policy_file_over_a_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    error = refused(tmp_path, LINE_FILE + "#" * MAX_FILE_BYTES + "\n")

    assert (error.key, error.problem) == ("", "is larger than 1,048,576 bytes")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f'[[lines]]\nnumber = "{"4" * 10_000}"\n', "lines[0].number"),
        (
            LINE_FILE + f"[chat]\n{'k' * 10_000} = 1\n",
            "chat." + "k" * 100 + "… (10,000 characters)",
        ),
    ],
)
def test_an_error_shows_at_most_a_hundred_characters_of_a_value_or_key(
    tmp_path: Path, text: str, key: str
) -> None:
    # Given a 10,000-character value or key, When it is refused
    error = refused(tmp_path, text)

    # Then the message stays short
    assert error.key == key
    assert len(error.problem) < 200


def test_bad_input_shows_at_most_a_hundred_characters_of_any_value() -> None:
    # Given values whose repr is huge, or that Python cannot turn into text at all
    nested: list[object] = []
    for _ in range(DEEP):
        nested = [nested]
    values: list[object] = ["x" * 10_000, 10**5000, nested]

    # When each is refused, Then its message holds at most 100 characters of it (and,
    # when cut, how long it was)
    for value in values:
        error = InvalidInput("field", value, "is wrong")
        shown = re.sub(r"… \([\d,]+ \w+\)$", "", str(error).removesuffix(": is wrong"))
        assert len(shown) <= len("field=") + 100


# Reload keeps the previous policy, whatever is wrong with the new file


def not_utf8(path: Path) -> None:
    path.write_bytes(b"# caf\xe9\n" + LINE_FILE.encode())


def a_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def writes(text: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(text, encoding="utf-8")


BREAKAGES: dict[str, Callable[[Path], object]] = {
    "missing": Path.unlink,
    "unreadable": a_folder,
    "not_utf8": not_utf8,
    "toml_syntax": writes('[[lines]]\nnumber = "+14155550100\n'),
    "long_integer": writes(LINE_FILE + "[caps]\nsends_per_day = " + "9" * 5000 + "\n"),
    "deep_array": writes(deep_array()),
    "deep_table": writes(deep_table()),
    "wrong_type": writes(LINE_FILE + '[caps]\nsends_per_minute = "20"\n'),
    "cap_above_bound": writes(LINE_FILE + "[caps]\nsends_per_minute = 1000000\n"),
    "no_opt_out_keyword": writes(LINE_FILE + "[opt_out]\nopt_out_keywords = []\n"),
    "linq_key_to_360dialog": writes(
        LINE_FILE + 'provider = "360dialog"\napi_key_env = "HEALTHGATE_LINQ_API_KEY"\n'
    ),
    "too_large": writes(LINE_FILE + "#" * MAX_FILE_BYTES),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_reload_of_a_broken_policy_keeps_the_previous_and_logs_why(
    tmp_path: Path, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker's policy, loaded from a good file
    path = tmp_path / "healthgate.toml"
    path.write_text(LINE_FILE + "[caps]\nsends_per_minute = 7\n", encoding="utf-8")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    source = PolicySource(path)
    before = source.current()

    # When the file is broken in place and the worker asks for the policy again
    BREAKAGES[breakage](path)
    with caplog.at_level(logging.ERROR, logger="scheduler.runtime"):
        after = source.current()

    # Then the worker goes on with the previous policy and the log says which file failed
    assert after is before
    assert after.caps.sends_per_minute == 7
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"policy file not reloaded, keeping the previous one: {path}"
    )
