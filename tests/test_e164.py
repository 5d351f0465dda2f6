"""Numbers in E.164: the quick split of a number already in that form agrees with
``phonenumbers.parse`` on every number, valid or not."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumberType

from policies.e164 import _CANONICAL, _split, _valid, to_e164
from policies.errors import InvalidInput


def parsed(text: str) -> tuple[phonenumbers.PhoneNumber | None, bool]:
    """What ``phonenumbers`` makes of ``text``: the number (None if it does not parse)
    and whether it is valid."""
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None, False
    return number, phonenumbers.is_valid_number(number)


def example_numbers() -> list[str]:
    """Every region's example numbers of every type, as E.164, and each with its
    region's national prefix put back in front of the national number."""
    found: set[str] = set()
    for region in phonenumbers.SUPPORTED_REGIONS:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.VOIP):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            found.add(e164)
            prefix = metadata.national_prefix if metadata else None
            if prefix:
                national = phonenumbers.national_significant_number(number)
                found.add(f"+{number.country_code}{prefix}{national}")
    return sorted(found)


#: '+', a country code (or three digits that are none), then up to 14 digits.
CANONICAL_TEXT = st.builds(
    lambda code, national: f"+{code}{national}",
    st.one_of(
        st.sampled_from(sorted(COUNTRY_CODE_TO_REGION_CODE)).map(str),
        st.integers(100, 999).map(str),
    ),
    st.text("0123456789", min_size=1, max_size=14),
)


@pytest.mark.parametrize("text", example_numbers())
def test_the_split_of_every_example_number_is_what_parse_makes(text: str) -> None:
    split = _split(text) if _CANONICAL.fullmatch(text) else None
    number, _ = parsed(text)
    # The split declines (None) rather than differ: parse is asked then.
    assert split is None or split == number


@settings(max_examples=3_000, deadline=None)
@given(text=CANONICAL_TEXT)
@example(text="+14155550123")  # split: no national prefix in front
@example(text="+114155550123")  # NANPA's national prefix 1: left to parse
@example(text="+4407911123456")  # the UK's 0: left to parse
@example(text="+390612345678")  # Italy keeps its leading zero
@example(text="+80012345678")  # a non-geographic code
@example(text="+5491123456789")  # Argentina's prefix rule matches anything
def test_the_split_agrees_with_parse_on_any_number_in_e164_form(text: str) -> None:
    # When a number in E.164 form is split, and parsed
    split = _split(text) if _CANONICAL.fullmatch(text) else None
    number, valid = parsed(text)

    # Then the split is either declined or exactly parse's number
    assert split is None or split == number
    # And to_e164 accepts it exactly when phonenumbers says it is valid
    try:
        result = to_e164(text, "to")
    except InvalidInput:
        assert not valid
    else:
        assert valid
        assert number is not None
        assert result == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_most_numbers_in_e164_form_are_split_without_parse() -> None:
    # The point of the split: a US or UK mobile number in E.164 does not go to parse
    assert _split("+14155550123") is not None
    assert _split("+447911123456") is not None


#: Country codes several regions share, where the region is found before validating.
SHARED_CODES = sorted(
    code for code, regions in COUNTRY_CODE_TO_REGION_CODE.items() if len(regions) > 1
)


@settings(max_examples=3_000, deadline=None)
@given(
    code=st.sampled_from(SHARED_CODES),
    national=st.integers(10**5, 10**11 - 1),
)
@example(code=1, national=4155550123)  # US
@example(code=1, national=4165550123)  # Canada
@example(code=1, national=8762345678)  # Jamaica: a region told apart by leading digits
@example(code=44, national=1481712345)  # Guernsey
def test_validity_is_what_phonenumbers_says_for_a_shared_country_code(
    code: int, national: int
) -> None:
    number = phonenumbers.PhoneNumber(country_code=code, national_number=national)

    assert _valid(number) == phonenumbers.is_valid_number(number)


@pytest.mark.parametrize("text", example_numbers())
def test_every_example_number_is_as_valid_as_phonenumbers_says(text: str) -> None:
    number = phonenumbers.parse(text, None)

    assert _valid(number) == phonenumbers.is_valid_number(number)
