"""Phone numbers in E.164, the only form healthgate stores."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, PhoneNumber

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
    number = _split(text) if _CANONICAL.fullmatch(text) else None
    if number is None:
        number = phonenumbers.parse(text, None)
    if not _valid(number):
        raise ValueError(text)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _valid(number: PhoneNumber) -> bool:
    """What ``phonenumbers.is_valid_number`` answers, checking the number against each
    region's patterns once instead of twice.

    For a country code several regions share (the +1 of the US, Canada and the
    Caribbean, the +44 of the UK and the Channel Islands), ``is_valid_number`` first
    finds the number's region: the first, in the library's order, whose leading digits
    match it or, for a region with none, whose patterns it fits. Then it checks the
    number against that region's patterns again. Here the first fit ends the search:
    fitting a region's patterns is what being valid for it means.
    """
    regions = COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0, ())
    if len(regions) < 2:
        return bool(phonenumbers.is_valid_number(number))
    national = phonenumbers.national_significant_number(number)
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            if re.match(metadata.leading_digits, national):
                return bool(phonenumbers.is_valid_number_for_region(number, region))
        elif phonenumbers.is_valid_number_for_region(number, region):
            return True
    return False


#: '+', a country code's first digit, then digits only: how applications store numbers.
_CANONICAL = re.compile(r"\+[1-9][0-9]{3,16}")


def _split(text: str) -> PhoneNumber | None:
    """What ``phonenumbers.parse`` makes of ``text`` ('+' and digits), or None when
    parsing could do more than split it into country code and national number.

    ``parse`` is generic (punctuation, extensions, national prefixes) and costs about
    half of a new number's validation; a number already in E.164 needs none of that
    unless its national part starts like the country's national prefix (the 1 of
    +1 1 415..., the 0 of +44 0...), which ``parse`` would strip. Those, and every
    country code that does not start a known one, are left to ``parse``.
    """
    digits = text[1:]
    for size in (1, 2, 3):
        country_code = int(digits[:size])
        if country_code in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None or len(national) < 2:
        return None
    prefix = metadata.national_prefix_for_parsing
    if prefix and re.match(prefix, national):
        return None
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    zeros = len(national) - len(national.lstrip("0"))
    if zeros:
        # As parse keeps them: at least one digit stays after the leading zeros.
        number.italian_leading_zero = True
        zeros = min(zeros, len(national) - 1)
        if zeros > 1:
            number.number_of_leading_zeros = zeros
    return number
