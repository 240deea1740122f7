"""What a member of a dataset is called for people: the one lookup every page and e-mail uses.

A dataset member's label is its schema `title`, found by following the path through `properties`, array `items`,
local `$ref`s and nullable `anyOf`/`oneOf` branches (`{"anyOf": [{"$ref": "#/$defs/date"}, {"type": "null"}]}`),
so `allocataires.nom_naissance` (or `allocataires[].nom_naissance`) finds « Nom de naissance » inside the
`$defs/personne` its array items point to. A title written beside a `$ref` wins over the target's own: `enfants[]`
reads « Enfant », not the shared « Personne du foyer ».

An enum value's label comes from the schema too: `x-enum-titles` maps each value (as JSON text for non-strings:
`"1"`, `"null"`) to its French title, next to the `enum` that validates it.

Invariant: a lookup never raises on a path the schema does not know; it returns None, and callers choose their
fallback (never the raw key: `readable` turns a key into words).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import schemas

Node = Mapping[str, Any]


def _pointer(root: Node, ref: str) -> Node:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, not {ref!r}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    if not isinstance(target, Mapping):
        raise ValueError(f"{ref} is not a schema")
    return target


def _is_null(node: Node) -> bool:
    return node.get("type") == "null" or node.get("const", ...) is None


def view(node: Node, root: Node) -> dict[str, Any]:
    """The keywords that apply to a value at `node`: its `$ref` chain merged (the nearer keyword wins), and the one
    non-null branch of a nullable `anyOf`/`oneOf` merged in, with `nullable` set."""
    chain: list[Node] = []
    current: Node | None = node
    while current is not None and len(chain) < 32:
        chain.append(current)
        ref = current.get("$ref")
        current = _pointer(root, ref) if isinstance(ref, str) else None
    merged: dict[str, Any] = {}
    for n in reversed(chain):
        merged.update({k: v for k, v in n.items() if k != "$ref"})
    branches = [b for b in (*merged.get("anyOf", ()), *merged.get("oneOf", ())) if isinstance(b, Mapping)]
    values = [b for b in branches if not _is_null(view(b, root))]
    if branches and len(values) == 1:
        inner = view(values[0], root)
        outer = {k: v for k, v in merged.items() if k not in ("anyOf", "oneOf")}
        merged = {**inner, **outer, "nullable": len(branches) > 1}
    return merged


def _child(node: Node, name: str, root: Node) -> Node | None:
    here = view(node, root)
    for _ in range(8):  # a path steps through arrays (and arrays of arrays) to their items' members
        items = here.get("items")
        if "properties" in here or not isinstance(items, Mapping):
            break
        here = view(items, root)
    props = here.get("properties")
    found = props.get(name) if isinstance(props, Mapping) else None
    return found if isinstance(found, Mapping) else None


def member(schema: Node, path: str) -> Node | None:
    """The schema node of a dotted path (`adresse.pays`, `enfants[].prenoms`, `enfants.prenoms`), or None."""
    node: Node | None = schema
    for part in path.split("."):
        if node is None:
            return None
        name = part.removesuffix("[]")
        node = _child(node, name, schema) if name else node
        if node is not None and part.endswith("[]"):
            items = view(node, schema).get("items")
            node = items if isinstance(items, Mapping) else None
    return node


def title_of(node: Node, root: Node) -> str | None:
    title = view(node, root).get("title")
    return title if isinstance(title, str) and title.strip() else None


def item_title(node: Node, root: Node) -> str | None:
    """The title of one item of the array at `node` (« Enfant » for `enfants`)."""
    items = view(node, root).get("items")
    return title_of(items, root) if isinstance(items, Mapping) else None


def enum_title(node: Node, root: Node, value: Any) -> str | None:
    titles = view(node, root).get("x-enum-titles")
    if not isinstance(titles, Mapping):
        return None
    key = value if isinstance(value, str) else json.dumps(value)
    found = titles.get(key)
    return found if isinstance(found, str) else None


def readable(key: str) -> str:
    """A key turned into words, for a member no schema describes: never shown as written."""
    words = key.replace("[]", "").replace("_", " ").replace(".", " — ").strip()
    return words[:1].upper() + words[1:] if words else "Donnée"


def dataset_title(dataset: str | None, version: int | None = None) -> str | None:
    if not dataset:
        return None
    try:
        schema = schemas.load(dataset, version or schemas.latest(dataset))
    except schemas.UnknownDataset:
        return None
    return title_of(schema, schema)


def field_title(dataset: str | None, path: str, version: int | None = None) -> str | None:
    """The French title of `path` in `dataset` (latest version unless given), or None when unknown."""
    if not dataset:
        return None
    try:
        schema = schemas.load(dataset, version or schemas.latest(dataset))
    except schemas.UnknownDataset:
        return None
    node = member(schema, path)
    return title_of(node, schema) if node is not None else None
