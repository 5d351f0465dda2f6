"""Reading opt-out and opt-in keywords in inbound text, per the policy's mode."""

from __future__ import annotations

import re
from enum import StrEnum

from policies.config import OptOutMode, OptOutPolicy

# Linq's newer rule accepts OPT OUT in any casing, with or without a space or hyphen.
_OPT_OUT_PHRASE = re.compile(r"opt[ -]?out", re.IGNORECASE)


class Inbound(StrEnum):
    """What an inbound message means for the chat."""

    #: The recipient asked to stop.
    OPT_OUT = "OPT_OUT"
    #: The recipient asked to resume.
    OPT_IN = "OPT_IN"
    #: An ordinary reply: engagement.
    REPLY = "REPLY"


def classify(text: str, policy: OptOutPolicy) -> Inbound:
    """Classify inbound ``text`` under the policy's matching mode."""
    if policy.mode is OptOutMode.EXACT:
        candidate, opt_out, opt_in = text, set(policy.opt_out_keywords), set(policy.opt_in_keywords)
    elif policy.mode is OptOutMode.LINQ:
        candidate, opt_out, opt_in = (
            text.strip(),
            set(policy.opt_out_keywords),
            set(policy.opt_in_keywords),
        )
        if _OPT_OUT_PHRASE.fullmatch(candidate):
            return Inbound.OPT_OUT
    else:
        # Strict errs on the side of stopping: everything the looser modes read as an
        # opt-out, in any case.
        if _OPT_OUT_PHRASE.fullmatch(text.strip()):
            return Inbound.OPT_OUT
        candidate = text.strip().casefold()
        opt_out = {word.casefold() for word in policy.opt_out_keywords}
        opt_in = {word.casefold() for word in policy.opt_in_keywords}
    if candidate in opt_out:
        return Inbound.OPT_OUT
    if candidate in opt_in:
        return Inbound.OPT_IN
    return Inbound.REPLY


def reply_opts_in(policy: OptOutPolicy) -> bool:
    """Whether any later non-keyword message clears an opt-out (Linq's newer rule)."""
    return policy.mode is OptOutMode.LINQ
