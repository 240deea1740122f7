"""The consent screen's content, in plain French: who asks, which data from whom, why (the purpose's registry label),
on which basis, for how long (with the date it ends), and the preview of the actual values, each under its schema
title and formatted for people (`broker.citizen.formatting`), derived answers as the question they answer.

A consent request may ask several things at once (several `authorization_details`): `request_view` describes one,
`context` the page. Pure functions of what `broker.citizen.oauth` gathered, so that a test renders the screen for
every dataset of the catalogue from its schema's examples, without a provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.citizen import formatting
from broker.citizen.portal.common import purpose_label
from broker.registry import Habilitation, Registry
from broker.registry.derived import PREFIX
from schemas import labels


@dataclass(frozen=True, slots=True)
class PreviewRow:
    field: str
    """The value of its checkbox: the field as requested, after its request's prefix (`0:adresse`)."""
    label: str
    shown: formatting.Shown
    present: bool


def _value_at(data: Mapping[str, Any] | None, path: str) -> tuple[bool, Any]:
    node: Any = data
    if node is None:
        return False, None
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def preview_rows(schema: Mapping[str, Any], data: Mapping[str, Any] | None, fields: Sequence[str],
                 hab: Habilitation | None, prefix: str = "") -> list[PreviewRow]:
    rows = []
    for field in fields:
        if field.startswith(PREFIX):
            rule = hab.derived_rule(field) if hab else None
            present, value = _value_at(data, "derived." + field.removeprefix(PREFIX))
            label = formatting.derived_question(rule, schema) if rule else labels.readable(field.removeprefix(PREFIX))
            text = formatting.derived_answer(rule, value) if rule and present else formatting.MISSING
            rows.append(PreviewRow(prefix + field, label, formatting.Shown(text=text), present))
            continue
        present, value = _value_at(data, field)
        node = labels.member(schema, field)
        label = (labels.title_of(node, schema) if node is not None else None) or labels.readable(field)
        rows.append(PreviewRow(prefix + field, label, formatting.show_field(schema, field, value), present))
    return rows


def duration(frequency: str, days: int, ends: datetime) -> str:
    """« Une seule fois, dans les 24 heures », « Une seule fois, d'ici au 1er janvier 2027 », « À chaque besoin,
    pendant 30 jours, jusqu'au 1er janvier 2027 »."""
    until = formatting.day_fr(ends.astimezone(formatting.PARIS).date())
    if frequency == "one_time":
        return "Une seule fois, dans les 24 heures" if days == 1 else f"Une seule fois, d'ici au {until}"
    return f"À chaque besoin, pendant {formatting.days_fr(days)}, jusqu'au {until}"


def request_view(*, schema: Mapping[str, Any], data: Mapping[str, Any] | None, fields: Sequence[str],
                 hab: Habilitation, registry: Registry, controller: str, recipient: str, provider: str,
                 provider_name: str, purpose: str, frequency: str, duration_days: int, now: datetime,
                 preview_error: str | None, prefix: str = "") -> dict[str, Any]:
    """What the screen shows of one thing asked: the data, from whom, for whom, why, on which basis, for how long,
    and the preview, each checkbox's value after `prefix`."""
    recipient_org = registry.organisation(recipient.split("/", 1)[0])
    recipient_label = None
    if recipient != controller:
        unit = recipient.split("/", 1)[1] if "/" in recipient else None
        base = recipient_org.name if recipient_org else recipient
        recipient_label = f"{base}, service « {unit.replace('-', ' ')} »" if unit else base
    return {
        "recipient_label": recipient_label, "dataset_title": labels.title_of(schema, schema) or "vos données",
        "provider": provider, "provider_name": provider_name, "purpose": purpose_label(registry, purpose),
        "legal_basis_title": hab.legal_basis.title, "legal_basis_url": hab.legal_basis.url,
        "duration": duration(frequency, duration_days, now + timedelta(days=duration_days)),
        "preview": preview_rows(schema, data, fields, hab, prefix), "preview_error": preview_error,
    }


def context(*, controller: str, controller_name: str, requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything `consent.html` shows but the form's request id and CSRF token."""
    providers = list(dict.fromkeys(r["provider_name"] for r in requests))
    return {"controller": controller, "controller_name": controller_name, "requests": list(requests),
            "providers": " et ".join(providers) if len(providers) < 3 else "d'autres administrations"}
