"""Structured Field Values for HTTP (RFC 8941): a strict parser and serialiser.

Invariant: parsing follows RFC 8941 §4.2 exactly and fails (`StructuredFieldError`) on anything the grammar does not
allow, and serialising a parsed value gives the canonical form of RFC 8941 §4.1. RFC 9421 relies on both: the
`@signature-params` line and the `sf`/`key` component values are re-serialisations, so signer and verifier must agree
byte for byte whatever spacing the sender used.

Types: integers are `int`, decimals `decimal.Decimal`, strings `str`, tokens `Token` (a `str` subclass, so that
`"abc"` and `abc` stay distinct), byte sequences `bytes`, booleans `bool`. Dates and display strings (RFC 9651) are not
supported: no field the broker reads uses them.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal, TypeAlias, cast


class StructuredFieldError(ValueError):
    """The text is not a valid structured field of the expected type, or a value cannot be serialised."""


class Token(str):
    """An sf-token, as opposed to an sf-string with the same characters."""

    __slots__ = ()


BareItem: TypeAlias = bool | int | Decimal | str | bytes
Params: TypeAlias = dict[str, BareItem]
FieldType: TypeAlias = Literal["item", "list", "dictionary"]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Params = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = field(default_factory=dict)


Member: TypeAlias = Item | InnerList

_MAX_INTEGER = 999_999_999_999_999
_KEY_RE = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN_RE = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER_RE = re.compile(r"-?([0-9]+)(?:\.([0-9]*))?")
# The unrolled form avoids per-character alternation: runs of plain characters between escape pairs.
_STRING_RE = re.compile(r'"([\x20\x21\x23-\x5b\x5d-\x7e]*(?:\\["\\][\x20\x21\x23-\x5b\x5d-\x7e]*)*)"')
_STRING_UNESCAPE_RE = re.compile(r'\\(["\\])')
_STRING_PLAIN_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_STRING_PRINTABLE_RE = re.compile(r"[\x20-\x7e]*")
_BYTES_RE = re.compile(r":([A-Za-z0-9+/=]*):")
_THOUSANDTH = Decimal("0.001")


# ---------------------------------------------------------------------------------------------------------------
# Parsing (RFC 8941 §4.2)
# ---------------------------------------------------------------------------------------------------------------


def parse_dictionary(text: str, *, unique_keys: bool = False) -> dict[str, Member]:
    """Parse a Dictionary. Multiple field lines must be joined with "," by the caller (RFC 8941 §4.2).

    RFC 8941 resolves a repeated key (of the dictionary or of any parameters in it) as "last wins". A policy that
    must not let a sender say two things at once passes `unique_keys=True`: a repeated key then fails instead.
    """
    s, i = _start(text)
    n = len(s)
    out: dict[str, Member] = {}
    if i == n:
        return out
    while True:
        m = _KEY_RE.match(s, i)
        if m is None:
            raise StructuredFieldError(f"dictionary key expected at offset {i}")
        key = m.group()
        i = m.end()
        member: Member
        if i < n and s[i] == "=":
            member, i = _parse_item_or_inner_list(s, i + 1, unique_keys)
        else:
            params, i = _parse_params(s, i, unique_keys)
            member = Item(True, params)
        if unique_keys and key in out:
            raise StructuredFieldError(f"dictionary key {key!r} is repeated")
        # RFC 8941 keeps the first position and the last value of a repeated key, as a Python dict does.
        out[key] = member
        i = _skip_ows(s, i)
        if i == n:
            return out
        if s[i] != ",":
            raise StructuredFieldError(f"',' expected at offset {i}")
        i = _skip_ows(s, i + 1)
        if i == n:
            raise StructuredFieldError("trailing ',' in dictionary")


def parse_list(text: str) -> list[Member]:
    s, i = _start(text)
    n = len(s)
    out: list[Member] = []
    if i == n:
        return out
    while True:
        member, i = _parse_item_or_inner_list(s, i)
        out.append(member)
        i = _skip_ows(s, i)
        if i == n:
            return out
        if s[i] != ",":
            raise StructuredFieldError(f"',' expected at offset {i}")
        i = _skip_ows(s, i + 1)
        if i == n:
            raise StructuredFieldError("trailing ',' in list")


def parse_item(text: str) -> Item:
    s, i = _start(text)
    item, i = _parse_item(s, i)
    while i < len(s) and s[i] == " ":
        i += 1
    if i != len(s):
        raise StructuredFieldError(f"unexpected {s[i]!r} after item at offset {i}")
    return item


def parse(text: str, field_type: FieldType) -> dict[str, Member] | list[Member] | Item:
    if field_type == "dictionary":
        return parse_dictionary(text)
    if field_type == "list":
        return parse_list(text)
    return parse_item(text)


def _start(text: str) -> tuple[str, int]:
    if not text.isascii():
        raise StructuredFieldError("structured fields are ASCII")
    # Only leading SP is discarded at the top level (RFC 8941 §4.2 step 2); trailing SP is handled by each parser.
    i = 0
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    return text, i


def _skip_ows(s: str, i: int) -> int:
    n = len(s)
    while i < n and (s[i] == " " or s[i] == "\t"):
        i += 1
    return i


def _parse_item_or_inner_list(s: str, i: int, unique_keys: bool = False) -> tuple[Member, int]:
    if i < len(s) and s[i] == "(":
        return _parse_inner_list(s, i, unique_keys)
    return _parse_item(s, i, unique_keys)


def _parse_inner_list(s: str, i: int, unique_keys: bool = False) -> tuple[InnerList, int]:
    i += 1  # the "("
    n = len(s)
    items: list[Item] = []
    while i < n:
        while i < n and s[i] == " ":
            i += 1
        if i < n and s[i] == ")":
            params, i = _parse_params(s, i + 1, unique_keys)
            return InnerList(tuple(items), params), i
        item, i = _parse_item(s, i, unique_keys)
        items.append(item)
        if i >= n or (s[i] != " " and s[i] != ")"):
            raise StructuredFieldError(f"' ' or ')' expected in inner list at offset {i}")
    raise StructuredFieldError("unterminated inner list")


def _parse_item(s: str, i: int, unique_keys: bool = False) -> tuple[Item, int]:
    value, i = _parse_bare_item(s, i)
    params, i = _parse_params(s, i, unique_keys)
    return Item(value, params), i


def _parse_params(s: str, i: int, unique_keys: bool = False) -> tuple[Params, int]:
    params: Params = {}
    n = len(s)
    while i < n and s[i] == ";":
        i += 1
        while i < n and s[i] == " ":
            i += 1
        m = _KEY_RE.match(s, i)
        if m is None:
            raise StructuredFieldError(f"parameter key expected at offset {i}")
        key = m.group()
        i = m.end()
        value: BareItem = True
        if i < n and s[i] == "=":
            value, i = _parse_bare_item(s, i + 1)
        if unique_keys and key in params:
            raise StructuredFieldError(f"parameter {key!r} is repeated")
        params[key] = value
    return params, i


def _parse_bare_item(s: str, i: int) -> tuple[BareItem, int]:
    if i >= len(s):
        raise StructuredFieldError("item expected at end of input")
    c = s[i]
    if c == '"':
        m = _STRING_RE.match(s, i)
        if m is None:
            raise StructuredFieldError(f"invalid or unterminated string at offset {i}")
        raw = m.group(1)
        return (_STRING_UNESCAPE_RE.sub(r"\1", raw) if "\\" in raw else raw), m.end()
    if c == "-" or "0" <= c <= "9":
        return _parse_number(s, i)
    if c == ":":
        m = _BYTES_RE.match(s, i)
        if m is None:
            raise StructuredFieldError(f"invalid or unterminated byte sequence at offset {i}")
        return _b64decode(m.group(1)), m.end()
    if c == "?":
        flag = s[i + 1 : i + 2]
        if flag == "1":
            return True, i + 2
        if flag == "0":
            return False, i + 2
        raise StructuredFieldError(f"invalid boolean at offset {i}")
    m = _TOKEN_RE.match(s, i)
    if m is None:
        raise StructuredFieldError(f"unexpected {c!r} at offset {i}")
    return Token(m.group()), m.end()


def _parse_number(s: str, i: int) -> tuple[int | Decimal, int]:
    m = _NUMBER_RE.match(s, i)
    if m is None:
        raise StructuredFieldError(f"digit expected at offset {i}")
    whole, frac = m.group(1), m.group(2)
    if frac is None:
        if len(whole) > 15:
            raise StructuredFieldError("integer has more than 15 digits")
        return int(m.group()), m.end()
    if len(whole) > 12:
        raise StructuredFieldError("decimal has more than 12 integer digits")
    if not frac:
        raise StructuredFieldError("decimal ends with '.'")
    if len(frac) > 3:
        raise StructuredFieldError("decimal has more than 3 fractional digits")
    return Decimal(m.group()), m.end()


def _b64decode(data: str) -> bytes:
    # RFC 8941 §4.2.7: parsers SHOULD NOT fail on missing "=" padding, so it is restored before strict decoding.
    try:
        return binascii.a2b_base64(data + "=" * (-len(data) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise StructuredFieldError(f"invalid base64 in byte sequence: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# Serialising (RFC 8941 §4.1)
# ---------------------------------------------------------------------------------------------------------------


def serialize_dictionary(dictionary: dict[str, Member]) -> str:
    parts = []
    for key, member in dictionary.items():
        _check_key(key)
        if isinstance(member, Item) and member.value is True:
            parts.append(key + serialize_params(member.params))
        else:
            parts.append(key + "=" + serialize_member(member))
    return ", ".join(parts)


def serialize_list(members: list[Member]) -> str:
    return ", ".join(serialize_member(m) for m in members)


def serialize_member(member: Member) -> str:
    if isinstance(member, InnerList):
        return serialize_inner_list(member)
    return serialize_item(member)


def serialize_inner_list(inner: InnerList) -> str:
    return "(" + " ".join(serialize_item(i) for i in inner.items) + ")" + serialize_params(inner.params)


def serialize_item(item: Item) -> str:
    if item.params:
        return serialize_bare_item(item.value) + serialize_params(item.params)
    return serialize_bare_item(item.value)


def serialize(value: dict[str, Member] | list[Member] | Item) -> str:
    if isinstance(value, dict):
        return serialize_dictionary(value)
    if isinstance(value, list):
        return serialize_list(value)
    return serialize_item(value)


def serialize_params(params: Params) -> str:
    out = []
    for key, value in params.items():
        _check_key(key)
        out.append(";" + key if value is True else ";" + key + "=" + serialize_bare_item(value))
    return "".join(out)


def serialize_bare_item(value: BareItem) -> str:
    # Exact types first (the hot path: strings and integers of Signature-Input), then subclasses, checking bool
    # before int (bool is an int) and Token before str (Token is a str).
    kind = type(value)
    if kind is str:
        return serialize_string(cast(str, value))
    if kind is int and -_MAX_INTEGER <= cast(int, value) <= _MAX_INTEGER:
        return str(value)
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, Token):
        if _TOKEN_RE.fullmatch(value) is None:
            raise StructuredFieldError(f"invalid token {value!r}")
        return str(value)
    if isinstance(value, str):
        return serialize_string(value)
    if isinstance(value, int):
        if not -_MAX_INTEGER <= value <= _MAX_INTEGER:
            raise StructuredFieldError("integer out of range")
        return str(value)
    if isinstance(value, bytes):
        return ":" + binascii.b2a_base64(value, newline=False).decode("ascii") + ":"
    if isinstance(value, Decimal):
        return _serialize_decimal(value)
    raise StructuredFieldError(f"cannot serialise {type(value).__name__}")


def serialize_string(value: str) -> str:
    if _STRING_PLAIN_RE.fullmatch(value) is not None:
        return '"' + value + '"'
    if _STRING_PRINTABLE_RE.fullmatch(value) is None:
        raise StructuredFieldError("strings are printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise StructuredFieldError("decimal must be finite")
    rounded = value.quantize(_THOUSANDTH, rounding=ROUND_HALF_EVEN)
    if abs(rounded) >= 1_000_000_000_000:
        raise StructuredFieldError("decimal has more than 12 integer digits")
    if rounded == 0:
        return "0.0"
    whole, _, frac = f"{rounded:f}".partition(".")
    return whole + "." + (frac.rstrip("0") or "0")


def serialize_key(key: str) -> str:
    """A dictionary or parameter key, checked (what a serialised dictionary member starts with)."""
    _check_key(key)
    return key


def _check_key(key: str) -> None:
    if _KEY_RE.fullmatch(key) is None:
        raise StructuredFieldError(f"invalid key {key!r}")
