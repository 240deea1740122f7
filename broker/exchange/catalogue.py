"""The public catalogue: what an integrator can ask for, from whom, under which legal bases, and each dataset's schema.

What it shows comes from two places: the schema files (titles, descriptions, fields: fixed for the life of the
process) and the current registry (providers and legal bases: changes with every `registry apply`).

Invariant: nothing here names a consumer. Legal bases are listed as the distinct (type, title, URL) triples of the
habilitations for a dataset, so the catalogue tells an integrator which texts open a dataset, not who uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

import schemas
from broker.errors import UnknownDataset
from broker.registry import Registry
from broker.service.problems import REQUEST_ID, detail_for, problem_for, problem_response
from broker.service.state import STATE

SCHEMA_PATH = "/v1/schemas/{dataset}.v{version}.json"
# Lenient on purpose: anything shaped like a schema file name reaches the handler, which answers unknown-dataset
# for what is not in the catalogue (rather than the router's bare not-found).
SCHEMA_ROUTE = "/v1/schemas/{dataset:[^/]+}.v{version:[^/.]+}.json"
_VERSION = re.compile(r"^[1-9][0-9]{0,5}$")


def schema_url(dataset: str, version: int) -> str:
    return SCHEMA_PATH.format(dataset=dataset, version=version)


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = root
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _types(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """The JSON types a member may take, through local `$ref`s and `anyOf`/`oneOf` branches ("null" last)."""
    node = _resolve(node, root)
    found: list[str] = []
    declared = node.get("type")
    if isinstance(declared, str):
        found.append(declared)
    elif isinstance(declared, list):
        found.extend(t for t in declared if isinstance(t, str))
    for branch in (*node.get("anyOf", ()), *node.get("oneOf", ())):
        found.extend(_types(branch, root))
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda t: t == "null")


def _fields(node: Mapping[str, Any], root: Mapping[str, Any], prefix: str, requestable: bool,
            ) -> Iterator[dict[str, Any]]:
    """Every member, depth first. Paths through array items are written `name[].member`: they document the
    items' members but cannot be requested alone (field paths address object members only)."""
    node = _resolve(node, root)
    required = set(node.get("required", ()))
    for name, sub in node.get("properties", {}).items():
        path = prefix + name
        field: dict[str, Any] = {
            "path": path,
            "type": _types(sub, root),
            "required": name in required,
            "requestable": requestable,
            "description": {"fr": sub.get("description"), "en": sub.get("x-description-en")},
        }
        enum = _resolve(sub, root).get("enum")
        if enum is not None:
            field["enum"] = enum
        yield field
        # The registry's field check follows `properties` as written, without `$ref`: so does requestability.
        yield from _fields(sub, root, path + ".", requestable and "$ref" not in sub)
        items = _resolve(sub, root).get("items")
        if isinstance(items, Mapping):
            yield from _fields(items, root, path + "[].", False)


def _parameters(declared: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """A version's dataset parameters (`parameters` of an exchange request): name, type, whether required, and
    the bounds the broker checks."""
    if declared is None:
        return []
    found = []
    for field in _fields(declared, declared, "", False):
        node = _resolve(declared["properties"][field["path"]], declared)
        found.append({"name": field["path"], "type": field["type"], "required": field["required"],
                      "title": node.get("title"), "description": field["description"],
                      **{k: node[k] for k in ("minimum", "maximum", "enum", "pattern", "format") if k in node},
                      "requires": declared.get("dependentRequired", {}).get(field["path"], [])})
    return found


@cache
def version_entry(dataset: str, version: int) -> dict[str, Any]:
    schema = schemas.load(dataset, version)
    return {
        "version": version,
        "schema": schema_url(dataset, version),
        "$id": schema["$id"],
        "title": schema.get("title"),
        "description": {"fr": schema.get("description"), "en": schema.get("x-description-en")},
        # the subject kinds (adapters.subjects) this version can be asked about; any other is refused
        "subjects": sorted(schemas.subject_kinds(dataset, version)),
        "parameters": _parameters(schemas.parameters_schema(dataset, version)),
        "fields": list(_fields(schema, schema, "", True)),
    }


def catalogue(registry: Registry) -> dict[str, Any]:
    """The catalogue document for `registry`."""
    bases: dict[str, set[tuple[str, str, str]]] = {}
    for hab in registry.habilitations:
        b = hab.legal_basis
        bases.setdefault(hab.dataset, set()).add((b.type, b.title, b.url))
    datasets = []
    for dataset, versions in schemas.catalogue().items():
        providers = []
        adapter = registry.adapter_for(dataset)
        if adapter is not None:
            org = registry.organisation(adapter.provider)
            providers.append({
                "organisation": {"siret": adapter.provider, "name": org.name if org else None},
                "adapter": adapter.id,
                "kind": adapter.kind,
            })
        datasets.append({
            "dataset": dataset,
            "latest_version": versions[-1],
            "versions": [version_entry(dataset, v) for v in versions],
            "providers": providers,
            "legal_bases": [{"type": t, "title": title, "url": url}
                            for t, title, url in sorted(bases.get(dataset, ()))],
        })
    return {"registry_version": registry.version, "datasets": datasets}


async def get_catalogue(request: web.Request) -> web.Response:
    body = orjson.dumps(catalogue(request.app[STATE].registry.current))
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=60"})


@cache
def _schema_bytes(dataset: str, version: int) -> bytes:
    # The file as published, byte for byte: what a consumer hashes is what the repository holds.
    return resources.files("schemas").joinpath(schemas.file_name(dataset, version)).read_bytes()


async def get_schema(request: web.Request) -> web.Response:
    dataset, version = request.match_info["dataset"], request.match_info["version"]
    if not _VERSION.match(version) or int(version) not in schemas.catalogue().get(dataset, ()):
        exc = UnknownDataset(f"no schema {dataset[:64]}.v{version[:8]}.json in the catalogue")
        return problem_response(problem_for(exc), detail=detail_for(exc), request_id=request.get(REQUEST_ID))
    return web.Response(body=_schema_bytes(dataset, int(version)), content_type="application/schema+json",
                        headers={"Cache-Control": "max-age=3600"})

