"""Dataset JSON Schemas (2020-12), one file per dataset version: `<dataset>.v<version>.json`.

Invariant: a schema's `$id` is `SCHEMA_BASE` + its file name, so a document can name its schema unambiguously.
"""

from __future__ import annotations

import json
import re
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
