"""RFC 8785 JSON Canonicalization Scheme (JCS): one byte string for one JSON value, for hashing and signing.

Invariants:
- equal JSON values give equal bytes, whatever the key order or number spelling of the input: objects are
  sorted by the UTF-16 code units of their keys, there is no whitespace, strings escape only what ECMAScript's
  JSON.stringify escapes, and numbers are spelled as ECMAScript spells the IEEE 754 double;
- a value JCS cannot carry faithfully is refused, never approximated: NaN and infinities, integers whose
  canonical spelling would read back as another integer (JCS treats every number as a double, so beyond
  ±2**53 most integers round: 2**53 + 1 has no spelling at all, 2**60 would come out as 1152921504606847000),
  strings with lone surrogates (not valid UTF-8), non-string keys, and any Python object that is not a JSON
  value. Such values belong in strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

JsonValue: TypeAlias = "bool | int | float | str | Sequence[JsonValue] | Mapping[str, JsonValue] | None"

# Up to this, every integer is a double and is spelled by ECMAScript with all its digits.
MAX_SAFE_INTEGER = 2**53
# Far deeper than any document the broker handles; the limit turns a cyclic structure into a clear refusal.
MAX_DEPTH = 200

_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    ord('"'): '\\"',
    ord("\\"): "\\\\",
}


class CanonicalizationError(ValueError):
    """The value is not one JCS can represent exactly. The message says which part, never its content."""


def canonicalize(value: JsonValue) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of `value`."""
    if _plain(value, 0):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: the general path refuses it, saying so
    return _general(value)


def _general(value: JsonValue) -> bytes:
    parts: list[str] = []
    _write(value, parts, 0)
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalizationError("a string holds a lone surrogate, which is not Unicode text") from None


def _plain(value: object, depth: int) -> bool:
    """Whether the standard library's C encoder spells `value` exactly as JCS does: dicts with string keys below
    U+D800 (code point order is then UTF-16 code unit order), lists, strings (both escape the same characters the
    same way: the two-letter escapes, other controls as lowercase \\u00xx, nothing else), integers within
    ±2**53, booleans and null. No float: Python spells 1.0 and 1e-07 where JCS spells 1 and 1e-7. The answers of
    the providers are mostly such documents; anything else takes the general path."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER  # type: ignore[operator]
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str or (key and max(key) >= "\ud800") or not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_plain(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    return False


def serialize_number(number: int | float) -> str:
    """ECMAScript Number::toString of the double `number` stands for (RFC 8785 §3.2.2.3)."""
    if isinstance(number, bool):
        raise CanonicalizationError("a boolean is not a number")
    if isinstance(number, int):
        exact = str(int(number))
        if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            return exact
        try:
            text = _serialize_double(float(number))
        except OverflowError:
            text = ""
        # Beyond 2**53 only some integers are spelled with their own digits (2**53 + 2 is, 2**60 is not).
        if text != exact:
            raise CanonicalizationError("an integer that is not exactly a double cannot be canonicalized")
        return text
    return _serialize_double(float(number))


def _serialize_double(x: float) -> str:
    if not math.isfinite(x):
        raise CanonicalizationError("NaN and infinities are not JSON numbers")
    if x == 0:
        return "0"  # -0 included
    if x < 0:
        return "-" + _serialize_double(-x)
    # Python's repr and ECMAScript both pick the shortest digit string that reads back as the same double
    # (the closest one, ties to even); only the layout around those digits differs, and is redone here.
    mantissa, _, exp = repr(x).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    exponent = int(exp or 0) - len(frac)  # x == int(digits) * 10**exponent
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    # ECMAScript's k and n: k digits, and x == 0.d1...dk * 10**n.
    k = len(digits)
    n = exponent + k
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(e)}"


def _string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _utf16_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the code-unit sequences do, which is RFC 8785's order
    # (it differs from code-point order for characters beyond the BMP versus U+E000..U+FFFF).
    try:
        return key.encode("utf-16-be")
    except UnicodeEncodeError:
        raise CanonicalizationError("an object key holds a lone surrogate") from None


def _write(value: object, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalizationError(f"nested deeper than {MAX_DEPTH} levels (or cyclic)")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int | float):
        out.append(serialize_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalizationError("an object key is not a string")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(f"a {type(value).__name__} is not a JSON value")
