"""Dataset JSON Schemas (2020-12), one file per dataset version: `<dataset>.v<version>.json`.

Invariant: a schema's `$id` is `SCHEMA_BASE` + its file name, so a document can name its schema unambiguously.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_BASE = "https://dlnuf.org/schemas/"
_NAME = re.compile(r"^(?P<dataset>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.json$")


class UnknownDataset(LookupError):
    pass


@cache
def catalogue() -> dict[str, tuple[int, ...]]:
    """Every dataset id with its available versions, ascending."""
    found: dict[str, list[int]] = {}
    for entry in resources.files(__name__).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.setdefault(m["dataset"], []).append(int(m["version"]))
    return {k: tuple(sorted(v)) for k, v in sorted(found.items())}


def file_name(dataset: str, version: int) -> str:
    return f"{dataset}.v{version}.json"


@cache
def load(dataset: str, version: int) -> dict[str, Any]:
    if version not in catalogue().get(dataset, ()):
        raise UnknownDataset(f"{dataset} v{version}")
    text = resources.files(__name__).joinpath(file_name(dataset, version)).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def latest(dataset: str) -> int:
    versions = catalogue().get(dataset)
    if not versions:
        raise UnknownDataset(dataset)
    return versions[-1]


def subject_kinds(dataset: str, version: int) -> frozenset[str]:
    """The subject kinds (`adapters.subjects`) a dataset version can be asked about, from its ``x-subjects``.

    A schema without ``x-subjects`` accepts no subject: a dataset is opened to a kind of subject on purpose (a
    test requires every schema to declare it), never by default.
    """
    declared = load(dataset, version).get("x-subjects", ())
    return frozenset(k for k in declared if isinstance(k, str))


def parameters_schema(dataset: str, version: int) -> dict[str, Any] | None:
    """The JSON Schema of a dataset version's parameters (``x-parameters``: what the provider needs beyond the
    subject, a month, a fiscal year); None when it takes none."""
    declared = load(dataset, version).get("x-parameters")
    return declared if isinstance(declared, dict) else None


def project(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """`value` with every object member the schema does not declare dropped, recursively; nothing else changed.

    Providers add fields over time and dataset schemas say `additionalProperties: false`, so an adapter whose
    dataset mirrors the provider's shape projects the answer instead of copying it: new upstream fields are not
    released, and values are never coerced, so a wrong type still fails validation afterwards. Follows local
    `$ref`s (`#/$defs/...`) and `anyOf`/`oneOf` branches that are objects or arrays.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        props = _declared(schema, root, "properties")
        if props is None:
            return value
        return {k: project(v, props[k], root) for k, v in value.items() if k in props}
    if isinstance(value, list):
        items = _declared(schema, root, "items")
        if items is None:
            return value
        return [project(v, items, root) for v in value]
    return value


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ValueError(f"only local $ref are supported, not {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        schema = target
    return schema


def _declared(schema: Mapping[str, Any], root: Mapping[str, Any], keyword: str) -> Any:
    if keyword in schema:
        return schema[keyword]
    for branch in (*schema.get("anyOf", ()), *schema.get("oneOf", ())):
        found = _declared(_resolve(branch, root), root, keyword)
        if found is not None:
            return found
    return None
