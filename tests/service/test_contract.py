"""One source of truth for request shapes (issue 18): the exchange parser and the published OpenAPI schema agree.

The document is judged as a client sees it (serialised, read back, compiled on its own); the parser is the
pipeline's. Before, the parser's own regular expressions (Python's `re`, where `$` matches before a final
newline) accepted `"purpose": "x\\n"`, which the published schema refuses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import orjson
import pytest

from broker.errors import InvalidRequest, InvalidSubject, UnknownDataset
from broker.exchange.pipeline import ExchangeRequest
from broker.service.openapi import openapi_document

BASE: dict[str, Any] = {
    "dataset": "quotient_familial", "purpose": "tarification-restauration-scolaire", "recipient": "21750001600019",
    "fields": ["quotient_familial", "enfants"],
    "subject": {"pivot_identity": {"family_name": "Dupont", "given_name": "Marie Claire", "birthdate": "1985-03-14",
                                   "gender": "female", "birthplace": "75114", "birthcountry": "99100"}},
}
PIVOT = ("subject", "pivot_identity")


def published() -> jsonschema_rs.Draft202012Validator:
    doc = orjson.loads(orjson.dumps(openapi_document()))
    return jsonschema_rs.Draft202012Validator({**doc["components"]["schemas"]["ExchangeRequest"],
                                               "components": doc["components"]}, validate_formats=True)


def put(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        node = body
        for part in path[:-1]:
            node = node[part]
        if value is DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return change


DELETE = object()
STRINGS = [("dataset",), ("purpose",), ("recipient",), (*PIVOT, "family_name"), (*PIVOT, "given_name"),
           (*PIVOT, "birthdate"), (*PIVOT, "gender"), (*PIVOT, "birthplace"), (*PIVOT, "birthcountry")]
CASES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [("as is", lambda b: None)]
for p in STRINGS:
    name = "/".join(p)
    CASES += [(f"{name} ends in a newline", lambda b, p=p: put(p, _get(b, p) + "\n")(b)),
              (f"{name} starts with a newline", lambda b, p=p: put(p, "\n" + _get(b, p))(b)),
              (f"{name} ends in a space", lambda b, p=p: put(p, _get(b, p) + " ")(b)),
              (f"{name} empty", put(p, "")), (f"{name} a number", put(p, 7)), (f"{name} absent", put(p, DELETE))]
CASES += [
    (f"version {v!r}", put(("version",), v)) for v in (0, 1, 2, 999, 1000, -1, 2**63, True, 1.5, "1", None)
] + [
    ("fields empty", put(("fields",), [])), ("fields 64", put(("fields",), [f"f{i}" for i in range(64)])),
    ("fields 65", put(("fields",), [f"f{i}" for i in range(65)])), ("fields twice", put(("fields",), ["a", "a"])),
    ("field ends in a newline", put(("fields",), ["enfants\n"])),
    ("field nested 8", put(("fields",), ["a.b.c.d.e.f.g.h"])),
    ("field nested 9", put(("fields",), ["a.b.c.d.e.f.g.h.i"])), ("field derived", put(("fields",), ["derived.x"])),
    ("unknown member", put(("extra",), 1)), ("recipient with a unit", put(("recipient",), "21750001600019/cantine")),
    ("dataset 64 chars", put(("dataset",), "a" * 64)), ("dataset 65 chars", put(("dataset",), "a" * 65)),
    ("blank family name", put((*PIVOT, "family_name"), "   ")),
    ("unknown day", put((*PIVOT, "birthdate"), "1985-03-00")),
    ("unknown month", put((*PIVOT, "birthdate"), "1985-00-00")),
    ("unknown month, known day", put((*PIVOT, "birthdate"), "1985-00-14")),
    ("month 13", put((*PIVOT, "birthdate"), "1985-13-01")), ("day 32", put((*PIVOT, "birthdate"), "1985-01-32")),
    ("born abroad with a commune", put((*PIVOT, "birthcountry"), "99134")),
    ("born abroad", lambda b: (put((*PIVOT, "birthcountry"), "99134")(b), put((*PIVOT, "birthplace"), "")(b))),
    ("born abroad, no birthplace", lambda b: (put((*PIVOT, "birthcountry"), "99134")(b),
                                              put((*PIVOT, "birthplace"), DELETE)(b))),
    ("born in France, no birthplace", put((*PIVOT, "birthplace"), DELETE)),
    ("gender other", put((*PIVOT, "gender"), "other")), ("preferred name", put((*PIVOT, "preferred_name"), "Martin")),
    ("pivot extra member", put((*PIVOT, "nir"), "1")), ("no subject", put(("subject",), DELETE)),
    ("identifier", put(("subject",), {"identifier": {"scheme": "ine", "value": "0123456789A"}})),
    ("identifier with a newline", put(("subject",), {"identifier": {"scheme": "ine", "value": "0123\n"}})),
    ("identifier scheme with a newline", put(("subject",), {"identifier": {"scheme": "ine\n", "value": "1"}})),
    ("identifier 128", put(("subject",), {"identifier": {"scheme": "france_travail", "value": "x" * 128}})),
    ("identifier 129", put(("subject",), {"identifier": {"scheme": "france_travail", "value": "x" * 129}})),
    ("INE of 10", put(("subject",), {"identifier": {"scheme": "ine", "value": "0123456789"}})),
    ("identifier named siren", put(("subject",), {"identifier": {"scheme": "siren", "value": "1"}})),
    ("siren", put(("subject",), {"siren": "732829320"})),
    ("siren with a newline", put(("subject",), {"siren": "732829320\n"})),
    ("rna", put(("subject",), {"rna": "W751234567"})),
    ("siren, wrong check digit", put(("subject",), {"siren": "732829321"})),
    ("both", put(("subject", "identifier"), {"scheme": "ine", "value": "1"})),
    ("subject a string", put(("subject",), "dupont")),
    ("context 100", put(("context",), "c" * 100)), ("context 101", put(("context",), "c" * 101)),
    ("object 50", put(("object",), "o" * 50)), ("object 51", put(("object",), "o" * 51)),
    ("context with a newline", put(("context",), "Marchés\npublics")), ("context a number", put(("context",), 1)),
]
# What the parser checks beyond any schema, each said in the document's descriptions: not a drift.
BEYOND_THE_SCHEMA = {
    "version 2": UnknownDataset,  # a version not in the catalogue
    "version 999": UnknownDataset,
    "dataset 64 chars": UnknownDataset,  # a well-formed name not in the catalogue
    "no subject": InvalidSubject,  # required without an access token
    "context with a newline": InvalidRequest,  # printable in Python's sense
    "siren, wrong check digit": InvalidSubject,  # Luhn
}


def _get(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for part in path:
        node = node[part]
    return node


@pytest.mark.parametrize(("name", "change"), CASES, ids=[c[0] for c in CASES])
def test_the_parser_accepts_what_the_published_schema_accepts(name: str, change: Callable[..., None]) -> None:
    body = copy.deepcopy(BASE)
    change(body)
    by_document = published().is_valid(body)
    try:
        ExchangeRequest.parse(orjson.dumps(body))
        by_parser: type[Exception] | None = None
    except (InvalidRequest, UnknownDataset) as exc:
        by_parser = type(exc)
    if name in BEYOND_THE_SCHEMA:
        assert by_document and by_parser is BEYOND_THE_SCHEMA[name]
        return
    assert by_document == (by_parser is None), (name, by_document, by_parser)


def test_the_known_cases_of_the_issue() -> None:
    validator = published()
    for member in ("purpose", "dataset", "recipient"):
        body = {**BASE, member: BASE[member] + "\n"}
        assert not validator.is_valid(body)
        with pytest.raises(InvalidRequest, match=f"^{member}: does not match"):
            ExchangeRequest.parse(orjson.dumps(body))
    # with an access token the consent names the citizen: the schema lets `subject` out, the parser needs it out
    token_body = {k: v for k, v in BASE.items() if k != "subject"}
    assert validator.is_valid(token_body)
    assert ExchangeRequest.parse(orjson.dumps(token_body), with_token=True).subject is None
    with pytest.raises(InvalidSubject, match="send no subject"):
        ExchangeRequest.parse(orjson.dumps(BASE), with_token=True)
    # a calendar check the schema cannot make
    feb30 = copy.deepcopy(BASE)
    feb30["subject"]["pivot_identity"]["birthdate"] = "2024-02-30"
    assert validator.is_valid(feb30)
    with pytest.raises(InvalidSubject, match="calendar date"):
        ExchangeRequest.parse(orjson.dumps(feb30))


@pytest.mark.parametrize("moment", ["2026-01-31", "2026-01-31T00:00:00Z", "2026-01-31t00:00:00z",
                                    "2026-01-31T00:00:00.123456789+01:00", "2026-12-31T23:59:60Z",
                                    "2026-01-31 00:00:00Z", "2026-01-31T00:00:00", "2026-02-30", "2026-01-31\n",
                                    "31/01/2026"])
def test_the_journal_reads_every_moment_the_document_allows(moment: str) -> None:
    from broker.tlog.routes import _journal_request

    doc = orjson.loads(orjson.dumps(openapi_document()))
    validator = jsonschema_rs.Draft202012Validator({**doc["components"]["schemas"]["JournalRequest"],
                                                    "components": doc["components"]}, validate_formats=True)
    body = {"subject": BASE["subject"], "since": moment, "until": moment, "consumer": "21750001600019",
            "dataset": "quotient_familial", "limit": 5000, "format": "csv"}
    try:
        _journal_request(orjson.dumps(body))
        accepted = True
    except InvalidRequest:
        accepted = False
    assert accepted == validator.is_valid(body), moment
    for member, bad in (("consumer", "21750001600019\n"), ("dataset", "quotient_familial\n"), ("limit", 5001),
                        ("limit", 0), ("format", "xml")):
        assert not validator.is_valid({**body, member: bad})
        with pytest.raises(InvalidRequest, match=f"^{member}: "):
            _journal_request(orjson.dumps({**body, "since": "2026-01-31", "until": "2026-01-31", member: bad}))
