"""The OpenAPI document's request schemas, compiled: what handlers check request bodies with.

One source of truth for request shapes: a handler does not keep its own copy of a pattern or a bound, it asks the
schema the document publishes (`openapi_document()["components"]["schemas"][name]`), compiled once with
jsonschema-rs, which reads patterns as ECMA-262 does (Python's `re` lets `^[a-z]+$` match "abc\\n"; the published
schema, and every client generated from it, does not). What a handler checks beyond the schema (a calendar date,
a dataset in the catalogue) is said in the document's descriptions; `tests/service/test_contract.py` proves the
two agree on every member.

Invariant: a refusal's message names where and which rule, never the value (a subject's values are personal data).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema_rs

from broker.service.openapi import openapi_document


class ContractViolation(ValueError):
    """A request body does not match its published schema. `path` is the JSON pointer of the first error."""

    def __init__(self, message: str, path: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.path = path


@cache
def _compiled(name: str) -> tuple[dict[str, Any], jsonschema_rs.Draft202012Validator]:
    doc = openapi_document()
    # the component with the document's components beside it: `#/components/schemas/X` resolves as in the document
    schema = {**doc["components"]["schemas"][name], "components": doc["components"]}
    return schema, jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


def _at(schema: Any, path: list[str | int]) -> Any:
    node = schema
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def verify(name: str, value: Any) -> None:
    """None when `value` matches the document's schema `name`, else `ContractViolation` naming where."""
    schema, validator = _compiled(name)
    if validator.is_valid(value):  # the common case, and the cheapest call
        return
    error = next(iter(validator.iter_errors(value)))
    path = tuple(error.instance_path)
    where = "/".join(str(p) for p in path) or "body"
    keyword = str(error.schema_path[-1]) if error.schema_path else "schema"
    rule = _at(schema, list(error.schema_path))
    hint = {
        "pattern": f"does not match {rule}" if isinstance(rule, str) else "does not match its pattern",
        "required": error.message.replace('"', "'"),
        "additionalProperties": error.message.replace('"', "'"),
        "type": f"must be of type {rule}",
        "enum": f"must be one of {rule}",
        "uniqueItems": "has duplicates",
        "minItems": f"needs at least {rule} item(s)",
        "maxItems": f"has more than {rule} items",
        "minLength": f"is shorter than {rule} characters",
        "maxLength": f"is longer than {rule} characters",
        "minimum": f"is less than {rule}",
        "maximum": f"is more than {rule}",
    }.get(keyword, f"fails '{keyword}'" + (f" ({rule})" if isinstance(rule, int | float) else ""))
    raise ContractViolation(f"{where}: {hint}", path)


@cache
def _path_parameters(path: str, method: str) -> tuple[tuple[str, jsonschema_rs.Draft202012Validator], ...]:
    operation = openapi_document()["paths"].get(path, {}).get(method.lower(), {})
    return tuple((p["name"], jsonschema_rs.Draft202012Validator(p["schema"], validate_formats=True))
                 for p in operation.get("parameters", ())
                 if p.get("in") == "path" and p.get("schema", {}).get("type") == "string")


def path_parameters_valid(path: str, method: str, values: Mapping[str, str]) -> bool:
    """Whether the path parameters of a request match the document's schemas for the route `path` (its template,
    as the document writes it) and `method`: a consent id that is not a UUID names no consent."""
    return all(validator.is_valid(values[name])
               for name, validator in _path_parameters(path, method) if name in values)
