"""Habilitations: may this consumer have these fields of this dataset, for this purpose, for this recipient?

Like X-Road's `isQueryAllowed`, one question with one answer; `verify_allowed` returns None or raises
`NotAuthorized` with the reason for the logs (the caller sees only that it was refused).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.errors import NotAuthorized
from broker.registry import Habilitation, Registry
from broker.registry.derived import PREFIX


def find_habilitation(registry: Registry, consumer: str, dataset: str) -> Habilitation:
    hab = registry.habilitation(consumer, dataset)
    if hab is None:
        raise NotAuthorized("refused", reason=f"no habilitation for {consumer} x {dataset}")
    return hab


def field_covered(requested: str, allowed: Iterable[str]) -> bool:
    """`adresse.code_postal` is covered by `adresse` (the whole object) or by itself."""
    return any(requested == a or requested.startswith(a + ".") for a in allowed)


def verify_allowed(hab: Habilitation, *, purpose: str, fields: Iterable[str], recipient: str) -> None:
    if purpose not in hab.purposes:
        raise NotAuthorized("refused", reason=f"purpose {purpose!r} not in habilitation {hab.id}")
    outside = [f for f in fields if not (field_covered(f, hab.fields) if not f.startswith(PREFIX)
                                         else hab.derived_rule(f) is not None)]
    if outside:
        raise NotAuthorized("refused", reason=f"fields {outside} not in habilitation {hab.id}")
    if recipient not in hab.recipients:
        raise NotAuthorized("refused", reason=f"recipient {recipient!r} not in habilitation {hab.id}")


def release(hab: Habilitation, document: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """What leaves the broker: the requested raw paths, and the requested derived answers under `derived`."""
    fields = list(fields)
    out = select_fields(document, [f for f in fields if not f.startswith(PREFIX)])
    derived = {}
    for f in fields:
        rule = hab.derived_rule(f) if f.startswith(PREFIX) else None
        if rule is not None and (value := rule.compute(document)) is not None:
            derived[rule.name] = value
    if derived:
        out["derived"] = derived
    return out


def select_fields(document: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Keep only the requested paths (data minimisation); a path absent from the document is simply absent."""
    out: dict[str, Any] = {}
    for path in sorted(fields):
        parts = path.split(".")
        node: Any = document
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            if parts[-1] not in target:
                target[parts[-1]] = node
    return out
