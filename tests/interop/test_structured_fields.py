"""broker.signing.structured_fields against the HTTP WG's structured-field test suite (httpwg/structured-field-tests,
in ../shared/vectors/structured-fields, its SOURCE file names the commit): every parsing case, then the
serialisation of every valid case and of the suite's serialisation-tests.

The module implements RFC 8941 (the core types). Of RFC 9651's additions it does not support Dates (``@…``) nor
Display Strings (``%"…"``): no field the broker reads uses them. Their files are run too, and every case in them
must fail to parse here, valid ones included: the suite's verdict on those types is recorded, not hidden.

The parser keeps RFC 8941's semantics to the letter, for example a dictionary key or a parameter repeated in one
field: the last value wins, in the first one's position (§4.2.2). Refusing such a duplicate in Signature-Input,
Signature or Content-Digest is a policy of RFC 9421 verification (`broker.signing.messages`), not of this parser;
`test_duplicates_are_the_parsers_last_wins_not_a_refusal` pins the difference.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.signing import structured_fields as sf
from tests.conftest import SHARED

SUITE = SHARED / "vectors" / "structured-fields"
RFC9651_ONLY = {"date.json", "display-string.json"}
"""Types the module does not implement (see the module docstring)."""


def _cases(directory: Path) -> list[Any]:
    cases = []
    for path in sorted(directory.glob("*.json")):
        for case in json.loads(path.read_text("utf-8")):
            cases.append(pytest.param(path.name, case, id=f"{path.stem}: {case['name']}"))
    return cases


# ------------------------------------------------------------------------------------------ JSON <-> our values


def _bare_to_json(value: sf.BareItem) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, sf.Token):
        return {"__type": "token", "value": str(value)}
    if isinstance(value, bytes):
        return {"__type": "binary", "value": base64.b32encode(value).decode()}
    if isinstance(value, Decimal):
        return float(value)
    return value


def _params_to_json(params: sf.Params) -> list[Any]:
    return [[k, _bare_to_json(v)] for k, v in params.items()]


def _member_to_json(member: sf.Member) -> list[Any]:
    if isinstance(member, sf.InnerList):
        return [[_member_to_json(i) for i in member.items], _params_to_json(member.params)]
    return [_bare_to_json(member.value), _params_to_json(member.params)]


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return [[k, _member_to_json(m)] for k, m in value.items()]
    if isinstance(value, list):
        return [_member_to_json(m) for m in value]
    return _member_to_json(value)


def _bare_from_json(value: Any) -> sf.BareItem:
    if isinstance(value, dict):
        if value["__type"] == "token":
            return sf.Token(value["value"])
        if value["__type"] == "binary":
            return base64.b32decode(value["value"])
        raise NotImplementedError(value["__type"])  # date, displaystring: RFC 9651 only
    if isinstance(value, float):
        return Decimal(repr(value))
    return value  # type: ignore[no-any-return]


def _member_from_json(value: Any) -> sf.Member:
    bare, params = value
    parsed = {k: _bare_from_json(v) for k, v in params}
    if isinstance(bare, list):
        return sf.InnerList(tuple(sf.Item(_bare_from_json(b), {k: _bare_from_json(v) for k, v in p})
                                  for b, p in bare), parsed)
    return sf.Item(_bare_from_json(bare), parsed)


def _from_json(field_type: str, value: Any) -> Any:
    if field_type == "dictionary":
        return {k: _member_from_json(m) for k, m in value}
    if field_type == "list":
        return [_member_from_json(m) for m in value]
    return _member_from_json(value)


def _same(actual: Any, expected: Any) -> bool:
    """Equal, numbers compared as numbers (the suite writes 1.0 where we hold Decimal("1.0"))."""
    if isinstance(expected, float) or isinstance(actual, float):
        return isinstance(actual, int | float) and not isinstance(actual, bool) and float(actual) == float(expected)
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            _same(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            _same(actual[k], expected[k]) for k in expected)
    return type(actual) is type(expected) and actual == expected


# ------------------------------------------------------------------------------------------ the suite


@pytest.mark.parametrize(("file", "case"), _cases(SUITE))
def test_parsing(file: str, case: dict[str, Any]) -> None:
    raw = ", ".join(case["raw"])  # several field lines are one field joined by commas (RFC 8941 §4.2)
    if file in RFC9651_ONLY or case.get("must_fail"):
        with pytest.raises(sf.StructuredFieldError):
            sf.parse(raw, case["header_type"])
        return
    try:
        parsed = sf.parse(raw, case["header_type"])
    except sf.StructuredFieldError:
        assert case.get("can_fail"), f"refused a valid field: {raw!r}"
        return
    assert _same(_to_json(parsed), case["expected"]), f"{raw!r} parsed as {_to_json(parsed)}"
    # and its serialisation is the canonical form
    canonical = case.get("canonical", case["raw"])
    assert sf.serialize(parsed) == (canonical[0] if canonical else "")


@pytest.mark.parametrize(("file", "case"), _cases(SUITE / "serialisation-tests"))
def test_serialisation(file: str, case: dict[str, Any]) -> None:
    if case.get("must_fail"):
        with pytest.raises((sf.StructuredFieldError, ValueError)):
            sf.serialize(_from_json(case["header_type"], case["expected"]))
        return
    assert sf.serialize(_from_json(case["header_type"], case["expected"])) == (case["canonical"] or [""])[0]


def test_the_suite_is_there_and_whole() -> None:
    assert (SUITE / "SOURCE").read_text().startswith("httpwg/structured-field-tests@")
    assert len(_cases(SUITE)) > 1500 and len(_cases(SUITE / "serialisation-tests")) > 100


def test_duplicates_are_the_parsers_last_wins_not_a_refusal() -> None:
    # RFC 8941 §4.2.2 and §4.2.3.2: overwrite, keeping the position. The suite has these cases too; here is why
    # it matters: RFC 9421 verification refuses them at the policy level, this parser must not.
    assert sf.parse_dictionary("a=1, b=2, a=3") == {"a": sf.Item(3), "b": sf.Item(2)}
    assert list(sf.parse_dictionary("a=1, b=2, a=3")) == ["a", "b"]
    assert sf.parse_item("1;p=1;q=2;p=3").params == {"p": 3, "q": 2}
