"""The policy file: the starter loads, every bad key is named with its file, caps merge."""

from __future__ import annotations

from pathlib import Path

import pytest

import policies
from policies.config import (
    Caps,
    ChatPolicy,
    ContentPolicy,
    DispatchPolicy,
    LinePolicy,
    OptOutPolicy,
    load_policy,
    parse_policy,
)
from policies.errors import PolicyFileError

STARTER = Path(policies.__file__).parent / "starter.toml"
LINE_A = "+14155550100"
LINE_B = "+14155550101"

TWO_LINES = f"""
[[lines]]
number = "{LINE_A}"

[[lines]]
number = "{LINE_B}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healthgate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_starter_file_declares_two_log_lines() -> None:
    # Given the starter file shipped with the package, When it is loaded
    policy = load_policy(STARTER)

    # Then it declares the two example lines on the log provider
    assert [(line.number, line.provider) for line in policy.lines] == [
        (LINE_A, "log"),
        (LINE_B, "log"),
    ]


def test_starter_file_shows_every_default() -> None:
    # Given the starter file, whose comment says every key shows its default
    policy = load_policy(STARTER)

    # Then every section equals the model's defaults
    assert (
        policy.chat,
        policy.line,
        policy.caps,
        policy.content,
        policy.opt_out,
        policy.dispatch,
    ) == (
        ChatPolicy(),
        LinePolicy(),
        Caps(),
        ContentPolicy(),
        OptOutPolicy(),
        DispatchPolicy(),
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        pytest.param(
            '[[lines]]\nnumber = "4155550100"\n',
            "lines[0].number",
            "must start with '+' and the country code (E.164) (got '4155550100')",
            id="line_number_without_country_code",
        ),
        pytest.param(
            '[[lines]]\nnumber = "+1415"\n',
            "lines[0].number",
            "is not a valid phone number for its country (got '+1415')",
            id="line_number_too_short",
        ),
        pytest.param(
            "[[lines]]\nnumber = 14155550100\n",
            "lines[0].number",
            "must be a phone number in E.164 form, e.g. +14155550123 (got 14155550100)",
            id="line_number_not_a_string",
        ),
        pytest.param(
            TWO_LINES + "\n[chat]\nat_risk_window_hours = 0\n",
            "chat.at_risk_window_hours",
            "Input should be greater than 0 (got 0)",
            id="zero_at_risk_window",
        ),
        pytest.param(
            TWO_LINES + "\n[chat]\ncritical_max_hold_hours = -1\n",
            "chat.critical_max_hold_hours",
            "Input should be greater than 0 (got -1)",
            id="negative_max_hold",
        ),
        pytest.param(
            TWO_LINES + "\n[caps]\nsends_per_minute = 0\n",
            "caps.sends_per_minute",
            "Input should be greater than 0 (got 0)",
            id="zero_cap",
        ),
        pytest.param(
            TWO_LINES + '\n[caps]\nsends_per_minute = "fast"\n',
            "caps.sends_per_minute",
            "Input should be a valid integer (got 'fast')",
            id="cap_not_a_number",
        ),
        pytest.param(
            TWO_LINES + "\n[line]\nrecovery_ramp_hours = -2\n",
            "line.recovery_ramp_hours",
            "Input should be greater than or equal to 0 (got -2)",
            id="negative_recovery_ramp",
        ),
        pytest.param(
            TWO_LINES + "\n[content]\nsame_body_max_recipients_per_hour = 0\n",
            "content.same_body_max_recipients_per_hour",
            "Input should be greater than 0 (got 0)",
            id="zero_same_body_recipients",
        ),
        pytest.param(
            TWO_LINES + "\n[content]\nrepeat_window = 3\n",
            "content.repeat_window",
            "unknown key",
            id="misspelt_content_key",
        ),
        pytest.param(
            TWO_LINES + "\n[line]\nat_risk_pace_factor = 1.5\n",
            "line.at_risk_pace_factor",
            "Input should be less than or equal to 1 (got 1.5)",
            id="pace_factor_above_one",
        ),
        pytest.param(
            f'[[lines]]\nnumber = "{LINE_A}"\n\n[[lines]]\nnumber = "{LINE_B}"\nprovdr = "log"\n',
            "lines[1].provdr",
            "unknown key",
            id="misspelt_line_key",
        ),
        pytest.param(
            f'[[lines]]\nnumber = "{LINE_A}"\nprovider = "twilio"\n',
            "lines[0].provider",
            "Input should be 'log', 'linq' or '360dialog' (got 'twilio')",
            id="unknown_provider",
        ),
        pytest.param(
            f'[[lines]]\nnumber = "{LINE_A}"\ncaps = {{ sends_per_minute = 0 }}\n',
            "lines[0].caps.sends_per_minute",
            "Input should be greater than 0 (got 0)",
            id="zero_per_line_cap",
        ),
        pytest.param(
            f'[[lines]]\nnumber = "{LINE_A}"\ncaps = {{ sends_per_hour = 5 }}\n',
            "lines[0].caps.sends_per_hour",
            "unknown key",
            id="unknown_per_line_cap",
        ),
        pytest.param(
            TWO_LINES + '\n[opt_out]\nmode = "loose"\n',
            "opt_out.mode",
            "Input should be 'exact', 'linq' or 'strict' (got 'loose')",
            id="unknown_opt_out_mode",
        ),
        pytest.param(
            TWO_LINES + "\n[chats]\nat_risk_window_hours = 24\n",
            "chats",
            "unknown key",
            id="misspelt_section",
        ),
        pytest.param(
            "[chat]\nat_risk_window_hours = 24\n",
            "lines",
            "Field required",
            id="missing_lines",
        ),
        pytest.param(
            "lines = []\n",
            "lines",
            "Tuple should have at least 1 item after validation, not 0",
            id="empty_lines",
        ),
    ],
)
def test_bad_key_is_named_with_its_file(tmp_path: Path, text: str, key: str, problem: str) -> None:
    # Given a policy file with one bad key
    path = write(tmp_path, text)

    # When it is loaded
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    # Then the error names the file, the exact key and the problem
    assert (caught.value.key, str(caught.value)) == (key, f"{path}: {key}: {problem}")


def test_duplicate_line_number_error_names_the_exact_key(tmp_path: Path) -> None:
    # Given two lines declaring the same number, the second written with spaces
    path = write(
        tmp_path, f'[[lines]]\nnumber = "{LINE_A}"\n\n[[lines]]\nnumber = "+1 415 555 0100"\n'
    )

    # When it is loaded
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    # Then the key is the second line's number, formatted like every other key
    assert (caught.value.key, str(caught.value)) == (
        "lines[1].number",
        f"{path}: lines[1].number: '{LINE_A}' is declared twice",
    )


def test_boolean_cap_is_refused(tmp_path: Path) -> None:
    # Given a cap written as a boolean
    path = write(tmp_path, TWO_LINES + "\n[caps]\nsends_per_minute = true\n")

    # When it is loaded, Then it is refused rather than read as one send a minute
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    assert caught.value.key == "caps.sends_per_minute"


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    # Given a file that is not TOML
    path = write(tmp_path, '[[lines]]\nnumber = "+14155550100\n')

    # When it is loaded
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    # Then the error names the file and says it is not valid TOML
    assert caught.value.key == ""
    assert str(caught.value).startswith(f"{path}: is not valid TOML (")


def test_missing_file_names_the_file_and_how_to_create_one(tmp_path: Path) -> None:
    # Given a path with no file, When it is loaded
    path = tmp_path / "absent.toml"
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)

    # Then the error names the file and the command that writes one
    assert (caught.value.key, str(caught.value)) == (
        "",
        f"{path}: no such file (create one with `healthgate init`)",
    )


def test_parse_policy_names_the_path_it_is_given() -> None:
    # Given already-parsed data with a bad cap, When it is validated
    with pytest.raises(PolicyFileError) as caught:
        parse_policy({"lines": [{"number": LINE_A}], "caps": {"sends_per_day": 0}}, "test.toml")

    # Then the error names the path passed in
    assert (
        str(caught.value) == "test.toml: caps.sends_per_day: Input should be greater than 0 (got 0)"
    )


def test_per_line_caps_override_defaults_key_by_key(tmp_path: Path) -> None:
    # Given default caps changed in [caps] and one line overriding one key
    path = write(
        tmp_path,
        f'[[lines]]\nnumber = "{LINE_A}"\n\n'
        f'[[lines]]\nnumber = "{LINE_B}"\ncaps = {{ sends_per_minute = 7 }}\n\n'
        "[caps]\nsends_per_day = 500\n",
    )

    # When the line's caps are asked for
    caps = load_policy(path).caps_for(LINE_B)

    # Then the override wins and every other key comes from [caps]
    assert caps == Caps(sends_per_minute=7, sends_per_day=500)


def test_line_without_overrides_gets_the_default_caps(tmp_path: Path) -> None:
    # Given one line with overrides and one without
    path = write(
        tmp_path,
        f'[[lines]]\nnumber = "{LINE_A}"\n\n'
        f'[[lines]]\nnumber = "{LINE_B}"\ncaps = {{ sends_per_minute = 7 }}\n\n'
        "[caps]\nsends_per_day = 500\n",
    )

    # When the other line's caps are asked for, Then they are [caps]
    assert load_policy(path).caps_for(LINE_A) == Caps(sends_per_day=500)


def test_unknown_line_gets_the_default_caps() -> None:
    # Given a policy, When caps are asked for a number it does not declare
    policy = parse_policy({"lines": [{"number": LINE_A, "caps": {"sends_per_day": 9}}]}, "t.toml")

    # Then they are the defaults
    assert policy.caps_for("+14155550199") == Caps()


def test_caps_for_answers_the_same_when_asked_again() -> None:
    # Given a line with an override, When its caps are asked for twice
    policy = parse_policy({"lines": [{"number": LINE_A, "caps": {"sends_per_day": 9}}]}, "t.toml")
    first = policy.caps_for(LINE_A)

    # Then the cached answer is the merged one
    assert (first, policy.caps_for(LINE_A)) == (Caps(sends_per_day=9), Caps(sends_per_day=9))


@pytest.mark.parametrize(
    "written",
    [
        pytest.param("+14155550100", id="already_e164"),
        pytest.param("+1 415 555 0100", id="spaces"),
        pytest.param("+1 (415) 555-0100", id="brackets_and_dash"),
        pytest.param("+1-415-555-0100", id="dashes"),
        pytest.param("  +14155550100  ", id="surrounding_blanks"),
    ],
)
def test_line_number_is_normalised_to_e164(written: str) -> None:
    # Given a line number written in a tolerated form, When the policy is parsed
    policy = parse_policy({"lines": [{"number": written}]}, "t.toml")

    # Then it is stored in E.164 and its config is found by that form
    assert [line.number for line in policy.lines] == [LINE_A]
    assert policy.line_config(LINE_A) is policy.lines[0]
