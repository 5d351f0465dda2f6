"""Phone numbers in E.164, the only form healthgate stores."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from policies.errors import InvalidInput


def to_e164(value: object, field: str) -> str:
    """Return ``value`` as an E.164 string, or raise naming ``field`` and the value.

    Spaces, dashes and brackets are tolerated, but the number must carry its country
    code with a leading ``+``: guessing a region would send to the wrong country.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, value, "must be a phone number in E.164 form, e.g. +14155550123")
    text = value.strip()
    if not text.startswith("+"):
        raise InvalidInput(field, value, "must start with '+' and the country code (E.164)")
    try:
        return _parsed(text)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInput(field, value, f"is not a phone number ({exc})") from None
    except ValueError:
        raise InvalidInput(field, value, "is not a valid phone number for its country") from None


# Parsing costs tens of microseconds; the same lines and recipients come back all the time.
@lru_cache(maxsize=65_536)
def _parsed(text: str) -> str:
    """``text`` in E.164; ValueError when it parses but is no valid number."""
    number = phonenumbers.parse(text, None)
    if not phonenumbers.is_valid_number(number):
        raise ValueError(text)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
