"""The journal's model: what one access-log entry means for the citizen it is about.

The page, the spreadsheet export and the receipt of an access all read entries through `EntryView`, which tells
apart four kinds, in the citizen's words:

- ``preview``: the consent screen showed the citizen their own values (purpose `apercu-consentement`, recipient
  `citoyen`); nothing went to the administration, whatever the citizen then decided. Logged as released to the
  citizen, it is never presented as a transfer;
- ``released``: data transmitted to the administration, with the fields that left;
- ``refused``: nothing transmitted, with the reason in a category the citizen can act on (administration not
  authorised, data not found at the provider, consent missing or withdrawn, their objection...);
- ``failed``: nothing transmitted because the provider could not answer.

The leaf itself is never changed: the kind and the reason are read from what the entry already holds (purpose,
recipient, outcome, problem type, legal basis).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.citizen.portal.common import (
    LEGAL_BASES,
    dataset_title,
    field_label,
    habilitation,
    organisation_name,
    purpose_label,
    when,
)
from broker.registry import Registry
from broker.tlog.accesslog import CITIZEN_RECIPIENT, is_preview

KINDS = {
    # kind: (badge text, DSFR badge colour)
    "preview": ("Aperçu pour vous seul·e", "info"),
    "released": ("Données transmises", "success"),
    "refused": ("Refusé", "warning"),
    "failed": ("Échec", "error"),
}
_NOT_AUTHORISED = ("Administration non habilitée",
                   "Cette administration n'est pas habilitée à obtenir ces données pour ce motif, ou sa demande n'a "
                   "pas pu être authentifiée. Rien n'a été transmis.")
_NOT_FOUND = ("Données introuvables",
              "L'administration qui détient ces données ne les a pas trouvées pour vous, ou n'a pas pu vous "
              "identifier avec certitude. Rien n'a été transmis.")
_UNAVAILABLE = ("Fournisseur indisponible",
                "L'administration qui détient ces données n'a pas pu répondre correctement. Rien n'a été "
                "transmis.")
_MALFORMED = ("Demande incomplète",
              "La demande était incomplète ou mal formée. Rien n'a été transmis.")
_REASONS: dict[str, tuple[str, str]] = {
    "not-authorized": _NOT_AUTHORISED,
    "signature-rejected": _NOT_AUTHORISED,
    "invalid-token": _NOT_AUTHORISED,
    "subject-not-found": _NOT_FOUND,
    "identity-ambiguous": _NOT_FOUND,
    "provider-rejected-query": _NOT_FOUND,
    "provider-unavailable": _UNAVAILABLE,
    "provider-timeout": _UNAVAILABLE,
    "provider-answer-malformed": _UNAVAILABLE,
    "provider-answer-invalid": _UNAVAILABLE,
    "provider-error": _UNAVAILABLE,
    "invalid-request": _MALFORMED,
    "invalid-subject": _MALFORMED,
    "unknown-dataset": _MALFORMED,
}
_CONSENT_MISSING = ("Consentement absent ou retiré",
                    "Votre consentement manquait, avait expiré, avait déjà servi ou avait été retiré. Rien n'a été "
                    "transmis.")
_OBJECTION = ("Votre opposition",
              "Vous vous êtes opposé·e à cet échange. Rien n'a été transmis.")
_OTHER = ("Refusé", "La demande a été refusée. Rien n'a été transmis.")


def reason_of(problem_type: object, basis: str) -> tuple[str, str]:
    """The category and explanation of a refusal or failure, from the problem type the entry holds (an URI or a
    slug) and the legal basis of the habilitation."""
    slug = str(problem_type or "").rsplit("/", 1)[-1]
    if slug == "legal-basis-refused":
        return {"consent": _CONSENT_MISSING, "proactive": _OBJECTION}.get(basis, _OTHER)
    return _REASONS.get(slug, _OTHER)


@dataclass(frozen=True, slots=True)
class EntryView:
    id: str
    logged_at: datetime
    when: str
    kind: str
    kind_label: str
    badge: str
    consumer: str | None
    consumer_name: str
    recipient: str | None
    """A sub-unit or other recipient than the consumer, when there is one."""
    dataset: str | None
    dataset_title: str
    fields: tuple[str, ...]
    fields_verb: str
    """« Montrées », « Transmises » or « Demandées »: what happened to `fields`."""
    purpose: str
    basis: str
    basis_title: str | None
    basis_url: str | None
    reason: str | None
    reason_detail: str | None
    summary: str


def view(entry: dict[str, Any], registry: Registry) -> EntryView:
    dataset, version = entry.get("dataset"), entry.get("dataset_version")
    ds = str(dataset) if dataset else None
    v = version if isinstance(version, int) else None
    outcome = str(entry.get("outcome"))
    consumer, recipient = entry.get("consumer"), entry.get("recipient")
    hab = habilitation(registry, entry.get("habilitation_id"))
    if not consumer and hab is not None:
        consumer = hab.consumer  # an entry logged before it named its consumer
    preview = is_preview(entry.get("purpose"), recipient)
    kind = "preview" if preview else outcome if outcome in KINDS else "refused"
    fields = entry.get("fields_released") if kind in ("released", "preview") else entry.get("fields_requested")
    labels = tuple(field_label(ds, str(f), v, hab) for f in fields) if isinstance(fields, list) else ()
    basis = str(entry.get("legal_basis_type") or "")
    reason = reason_of(entry.get("problem_type"), basis) if kind in ("refused", "failed") else None
    name = organisation_name(registry, str(consumer) if consumer else None)
    title = dataset_title(ds, v)
    summary = {
        "preview": f"Vos données « {title} » vous ont été montrées, à vous seul·e, avant que vous décidiez de les "
                   f"partager avec {name}. Rien ne lui a été transmis à ce moment-là.",
        "released": f"{name} a obtenu vos données « {title} ».",
        "refused": f"{name} a demandé vos données « {title} » : refusé.",
        "failed": f"{name} a demandé vos données « {title} » : le fournisseur n'a pas répondu.",
    }[kind]
    logged_at = datetime.fromisoformat(str(entry["logged_at"]))
    return EntryView(
        id=str(entry["id"]), logged_at=logged_at, when=when(logged_at), kind=kind, kind_label=KINDS[kind][0],
        badge=KINDS[kind][1], consumer=str(consumer) if consumer else None, consumer_name=name,
        recipient=None if preview or not recipient or recipient in (consumer, CITIZEN_RECIPIENT) else str(recipient),
        dataset=ds, dataset_title=title, fields=labels,
        fields_verb={"preview": "Montrées", "released": "Transmises"}.get(kind, "Demandées"),
        purpose=purpose_label(registry, str(entry.get("purpose") or "")),
        basis=LEGAL_BASES.get(basis, "Non déterminée"),  # none: refused before any habilitation matched
        basis_title=str(entry["legal_basis_title"]) if entry.get("legal_basis_title") else None,
        basis_url=str(entry["legal_basis_url"]) if entry.get("legal_basis_url") else None,
        reason=reason[0] if reason else None, reason_detail=reason[1] if reason else None, summary=summary,
    )
