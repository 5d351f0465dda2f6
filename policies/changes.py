"""What a policy change changes: the policy's normal form and fingerprint, the keys that
differ between two policies, and the holds each difference governs.

Pure: the store keeps the normal form of the policy last applied, and the holds a change
governs are worked out from two normal forms alone, so a worker compares what it loaded
with what was applied, whichever file each came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from policies.codes import CAP_CODES, Code
from policies.config import EarlyWarningPolicy, Policy
from policies.errors import cut

#: Hex digits of the fingerprint shown and stored: enough to tell policies apart.
FINGERPRINT_LENGTH = 12

#: Every cap's hold.
_CAPS = frozenset(CAP_CODES.values())
#: Holds whose deadline is the maximum hold (``policies.gate._hold``).
_DEFERRED = frozenset(
    {
        Code.CHAT_CRITICAL,
        Code.LINE_CRITICAL,
        Code.LINE_FLAGGED,
        Code.PROVIDER_LINE_BLOCKED,
        Code.NO_LINE,
    }
)
#: The provider's own holds of one line: its answer decided them.
_PROVIDER = frozenset(
    {
        Code.PROVIDER_LINE_BLOCKED,
        Code.PROVIDER_RATE_LIMITED,
        Code.PROVIDER_UNAVAILABLE,
        Code.PROVIDER_NO_LINE,
    }
)
#: Every hold a line's messages may wait under.
_ALL_HOLDS = (
    _CAPS
    | _DEFERRED
    | _PROVIDER
    | {
        Code.CHAT_AT_RISK,
        Code.CONTENT_REPEATED,
        Code.CONTENT_SAME_BODY,
        Code.QUIET_HOURS,
        Code.LINE_HOURS,
    }
)
#: A line's own keys that say when it sends.
_LINE_HOURS_KEYS = ("window", "days", "timezone")
#: Keys that scale a line's caps only while it runs below them (AT_RISK, or ramping up).
_PACES = frozenset({"line.at_risk_pace_factor", "line.recovery_ramp_hours"})

#: The holds each key outside ``lines`` governs, on every line. Every key of the policy
#: is here, those that govern no hold with an empty set (``tests/test_policy_reload.py``
#: fails for a key left out). ``caps.*`` and the ``line.*`` paces act through each
#: line's caps: see :func:`affected`.
GOVERNS: Mapping[str, frozenset[Code]] = {
    "chat.at_risk_max_unanswered": frozenset({Code.CHAT_AT_RISK}),
    "chat.at_risk_window_hours": frozenset({Code.CHAT_AT_RISK}),
    "chat.critical_max_hold_hours": _DEFERRED,
    # AT_RISK and ramping lines only (``Affected.paced``).
    "line.at_risk_pace_factor": _CAPS,
    "line.recovery_ramp_hours": _CAPS,
    # More lines may take new recipients.
    "line.at_risk_takes_new_recipients": frozenset({Code.NO_LINE}),
    # A flagged line's hold ends at its next probe.
    "line.probe_after_minutes": frozenset({Code.LINE_FLAGGED}),
    "content.at_risk_repeat_window_hours": frozenset({Code.CONTENT_REPEATED}),
    "content.same_body_max_recipients_per_hour": frozenset({Code.CONTENT_SAME_BODY}),
    # The backoff after a failed attempt; the count of attempts is read at the answer.
    "dispatch.retry_base_seconds": frozenset({Code.PROVIDER_UNAVAILABLE, Code.PROVIDER_NO_LINE}),
    "dispatch.retry_max_seconds": frozenset({Code.PROVIDER_UNAVAILABLE, Code.PROVIDER_NO_LINE}),
    "dispatch.max_attempts": frozenset(),
    # Keywords are read when a message comes in: nothing held waits on them.
    "opt_out.mode": frozenset(),
    "opt_out.scope": frozenset(),
    "opt_out.opt_out_keywords": frozenset(),
    "opt_out.opt_in_keywords": frozenset(),
    "signals.time_tolerance_seconds": frozenset(),
    # The estimate may raise or lower any chat's or line's status: every hold it shapes.
    **{f"early_warning.{key}": _ALL_HOLDS for key in EarlyWarningPolicy.model_fields},
}


class Change(NamedTuple):
    """One key whose value differs; None where the key is absent."""

    key: str
    old: Any
    new: Any


class Affected(NamedTuple):
    """Holds a change governs: messages whose last code is one of ``codes``, on
    ``lines`` (None: on every line, and on none)."""

    codes: frozenset[Code]
    lines: frozenset[str] | None = None
    #: Only on lines whose caps run below their own (AT_RISK, or ramping up).
    paced: bool = False


def normalised(policy: Policy) -> dict[str, Any]:
    """The policy with every default filled in, lines by number (their order in the file
    decides nothing), as JSON values."""
    data = policy.model_dump(mode="json")
    data["lines"] = {
        line["number"]: {key: value for key, value in line.items() if key != "number"}
        for line in data["lines"]
    }
    return data


def fingerprint(normal: Mapping[str, Any]) -> str:
    """A short, stable hash of a normal form: equal for equivalent files."""
    canonical = json.dumps(normal, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The keys whose values differ, dotted (``lines.+14155550100.caps.sends_per_day``),
    in order; a table present on one side only is one change."""
    return list(_diff(old, new, ""))


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> Iterator[Change]:
    for key in sorted(old.keys() | new.keys()):
        name = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            yield from _diff(before, after, f"{name}.")
        elif before != after:
            yield Change(name, before, after)


def described(changes: list[Change]) -> str:
    """The changes in one line, each value cut to 100 characters."""
    if not changes:
        return "nothing"
    return ", ".join(f"{c.key} {_shown(c.old)} → {_shown(c.new)}" for c in changes)


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return cut(text)


def affected(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Affected]:
    """The holds the change from ``old`` to ``new`` governs (normal forms)."""
    found: list[Affected] = []
    for change in diff(old, new):
        section = change.key.partition(".")[0]
        if section in ("lines", "caps"):
            continue  # read below, line by line
        if section == "categories":
            # A window moved, or a category came or went: held messages of any category
            # are looked at again (a priority alone holds nothing; see ``priorities``); a
            # category's share of the caps governs the caps' holds.
            if change.key.endswith(".cap_share"):
                found.append(Affected(_CAPS))
            elif not change.key.endswith(".priority"):
                found.append(Affected(frozenset({Code.QUIET_HOURS})))
            continue
        codes = GOVERNS.get(change.key, _ALL_HOLDS)  # a key unknown here: every hold
        if codes:
            found.append(Affected(codes, None, paced=change.key in _PACES))
    found.extend(_line_holds(old, new))
    return found


def _line_holds(old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Affected]:
    """Holds of one line that its caps or its provider govern; a line added or removed
    frees or takes a line for every message waiting for one."""
    before, after = old.get("lines", {}), new.get("lines", {})
    if before.keys() != after.keys():
        yield Affected(frozenset({Code.NO_LINE}))
    for number in sorted(before.keys() - after.keys()):
        # Its messages now wait for a line instead: each is looked at again.
        yield Affected(_ALL_HOLDS, frozenset({number}))
    for number in sorted(before.keys() & after.keys()):
        codes = {
            CAP_CODES[cap]
            for cap in CAP_CODES
            if _cap(old, before[number], cap) != _cap(new, after[number], cap)
        }
        if any(before[number].get(k) != after[number].get(k) for k in ("provider", "api_key_env")):
            codes |= _PROVIDER
        if any(before[number].get(k) != after[number].get(k) for k in _LINE_HOURS_KEYS):
            codes.add(Code.LINE_HOURS)
        if codes:
            yield Affected(frozenset(codes), frozenset({number}))


def priorities(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, int]:
    """The categories whose messages' priority changes from ``old`` to ``new`` (normal
    forms), with the new one: a category no longer defined takes marketing's."""
    before, after = old.get("categories") or {}, new.get("categories") or {}
    fallback = (after.get("marketing") or {}).get("priority", 0)
    changed: dict[str, int] = {}
    for name in sorted(before.keys() | after.keys()):
        was = (before.get(name) or {}).get("priority")
        now = (after.get(name) or {}).get("priority", fallback)
        if was != now and name in before:
            changed[name] = now
    return changed


def _cap(policy: Mapping[str, Any], line: Mapping[str, Any], cap: str) -> Any:
    """A line's cap as it applies: its own, else the policy's ``[caps]``."""
    own = (line.get("caps") or {}).get(cap)
    return own if own is not None else (policy.get("caps") or {}).get(cap)


__all__ = [
    "FINGERPRINT_LENGTH",
    "GOVERNS",
    "Affected",
    "Change",
    "affected",
    "described",
    "diff",
    "fingerprint",
    "normalised",
    "priorities",
]
