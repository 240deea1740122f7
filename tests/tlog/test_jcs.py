"""JCS: the RFC 8785 examples, ECMAScript number spelling, and the refusals."""

from __future__ import annotations

import json
import math
import re
import struct
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.tlog import jcs
from broker.tlog.jcs import CanonicalizationError, canonicalize, serialize_number

# RFC 8785 §3.2.2 and §3.2.4: the input, as text, and its canonical form.
RFC_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_OUTPUT = r"""{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"""  # noqa: E501
# §3.2.4 gives the same output in hex, so the bytes themselves are checked, not only the text.
RFC_OUTPUT_HEX = (
    "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 75 65 2c 66 61 6c 73 65 5d 2c 22 6e"
    "75 6d 62 65 72 73 22 3a 5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 65 2b 33 30"
    "2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24"
    "5c 75 30 30 30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d"
)

# RFC 8785 §3.2.3: property names sorted by UTF-16 code units (the emoji, D83D DE00, sorts before U+FB33).
RFC_SORTING_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC_SORTED_VALUES = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]

# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical spelling (None: must be refused).
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("7fffffffffffffff", None),
    ("7ff0000000000000", None),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def test_rfc_example() -> None:
    out = canonicalize(json.loads(RFC_INPUT))
    assert out == RFC_OUTPUT.encode()
    assert out == bytes.fromhex(RFC_OUTPUT_HEX)


def test_rfc_sorting_example() -> None:
    out = canonicalize(json.loads(RFC_SORTING_INPUT))
    assert list(json.loads(out).values()) == RFC_SORTED_VALUES
    # Nothing outside U+0000..U+001F is escaped: U+0080, the emoji and the rest go out as UTF-8.
    assert out.startswith(b'{"\\r":"Carriage Return","1":"One","\xc2\x80":"Control"')
    assert b"\\u" not in out


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B, ids=[b for b, _ in APPENDIX_B])
def test_appendix_b_numbers(bits: str, expected: str | None) -> None:
    (x,) = struct.unpack(">d", bytes.fromhex(bits))
    if expected is None:
        with pytest.raises(CanonicalizationError):
            canonicalize(x)
    else:
        assert serialize_number(x) == expected
        assert canonicalize([x]) == f"[{expected}]".encode()


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0, "0"),
        (-1, "-1"),
        (4.0, "4"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (123.456e-10, "1.23456e-8"),
        (0.1 + 0.2, "0.30000000000000004"),
        (2**53, "9007199254740992"),
        (-(2**53), "-9007199254740992"),
    ],
)
def test_numbers(number: float, expected: str) -> None:
    assert serialize_number(number) == expected


ES_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?(e[+-][1-9][0-9]*)?")


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_double_reads_back_exactly_and_in_ecmascript_form(x: float) -> None:
    text = serialize_number(x)
    assert ES_NUMBER.fullmatch(text), text
    assert float(text) == x
    # Shortest: no spelling with fewer significant digits reads back as the same double.
    mantissa = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
    if len(mantissa) > 1:
        assert float(f"{float(text):.{len(mantissa) - 2}e}") != x
    # ECMAScript's switch points between fixed and exponential notation.
    if x != 0:
        exponent = math.floor(math.log10(abs(float(text))))
        assert ("e" in text) == (not -7 < exponent < 21), text


@pytest.mark.parametrize("number", [2**53 + 1, -(2**53) - 1, 2**60, 10**21, 10**400])
def test_integers_that_are_not_exactly_spelled_doubles_are_refused(number: int) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize({"n": number})


@pytest.mark.parametrize("number", [2**53 + 2, -(2**53) - 2, 10**20, 295147905179352830000])
def test_integers_beyond_2_53_spelled_with_their_own_digits_are_kept(number: int) -> None:
    assert canonicalize(number) == str(number).encode()
    assert serialize_number(float(number)) == str(number)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(number: float) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize({"n": [number]})


def test_strings() -> None:
    assert canonicalize("\x00\x1f\x7f\u2028/<>&'") == b'"\\u0000\\u001f\x7f\xe2\x80\xa8/<>&\'"'
    assert canonicalize('\b\t\n\f\r"\\') == b'"\\b\\t\\n\\f\\r\\"\\\\"'
    assert canonicalize("é😀") == '"é😀"'.encode()


@pytest.mark.parametrize(
    "value",
    [
        "\ud800",
        {"\udfff": 1},
        {1: "one"},
        {("a",): 1},
        b"bytes",
        {1, 2},
        object(),
        {"nested": [1, {"deeper": 1j}]},
    ],
    ids=repr,
)
def test_non_json_values_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


def test_cycles_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CanonicalizationError):
        canonicalize(loop)


def test_nesting_literals_and_empty_containers() -> None:
    value = OrderedDict([("b", [True, False, None, [], {}]), ("a", {"z": 1, "y": (2, 3.5)})])
    assert canonicalize(value) == b'{"a":{"y":[2,3.5],"z":1},"b":[true,false,null,[],{}]}'
    assert canonicalize(True) == b"true"
    assert canonicalize(None) == b"null"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_form_is_a_fixed_point_of_parse_and_canonicalize(value: Any) -> None:
    out = canonicalize(value)
    # The output is JSON, and canonicalizing what it parses to gives the same bytes: one value, one spelling.
    assert canonicalize(json.loads(out)) == out


def assert_as_the_general_path(value: Any) -> None:
    """`canonicalize` gives the general path's bytes, or refuses what it refuses."""
    try:
        general = jcs._general(value)
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonicalize(value)
        return
    assert canonicalize(value) == general


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_values | plain_values)
def test_the_fast_path_spells_every_value_as_the_general_one(value: Any) -> None:
    """`canonicalize` hands documents without floats to the standard library's C encoder: byte for byte what the
    general path writes, keys beyond the BMP, control characters, lone surrogates and 2**53 included."""
    assert_as_the_general_path(value)


@pytest.mark.parametrize("value", [
    {"\ufb33": 1, "\U0001F600": 2, "\u20ac": 3},  # code point order would put the emoji last
    {"a": "\ud800"},  # a lone surrogate
    {"k": [1, 2**53, -(2**53), "\x00\x1f\x7f\u2028\"\\/"]},
    {"n": 2**53 + 2},
    ("tuple", True, None),
])
def test_the_fast_path_on_its_edges(value: Any) -> None:
    assert_as_the_general_path(value)
