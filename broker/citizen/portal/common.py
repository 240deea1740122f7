"""What every portal page shares: the page frame (navigation, session, logout form), French labels, dates."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp import web

import schemas
from broker.citizen import pages
from broker.citizen.login import LOGIN_CONFIG, LOGOUT_PATH
from broker.registry import Registry
from consent.sessions import CSRF_FIELD, CitizenSession

PARIS = ZoneInfo("Europe/Paris")
"""Citizens read times in French legal time; exports keep UTC (RFC 3339)."""

NAV = (
    ("accueil", "/citizen/", "Accueil"),
    ("journal", "/citizen/journal", "Journal des accès"),
    ("consentements", "/citizen/consentements", "Mes consentements"),
    ("oppositions", "/citizen/oppositions", "Mes oppositions"),
)

LEGAL_BASES = {
    "information": "Information",  # CRPA L114-8 I: mandatory for the démarche, the citizen is informed
    "proactive": "Démarche proactive",  # L114-8 II: to detect entitlements, the citizen may object
    "consent": "Consentement",
}
OUTCOMES = {
    "released": ("Données transmises", "success"),
    "refused": ("Refusé", "warning"),
    "failed": ("Échec", "error"),
}
CONSENT_STATES = {
    "active": ("En cours", "success"),
    "used_up": ("Utilisé", "info"),
    "expired": ("Expiré", "new"),
    "revoked": ("Retiré", "warning"),
    "refused": ("Refusé", "error"),
}
PURPOSES = {
    # purposes the broker itself uses; a habilitation's purposes are read as their code
    "apercu-consentement": "Vous montrer vos données avant que vous décidiez de les partager",
}


def when(moment: datetime) -> str:
    """'22/11/2026 à 15:57', in Paris time."""
    return moment.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")


def day(moment: datetime) -> str:
    return moment.astimezone(PARIS).strftime("%d/%m/%Y")


def purpose_label(purpose: str | None) -> str:
    if not purpose:
        return "non précisée"
    return PURPOSES.get(purpose) or purpose.replace("-", " ").replace("_", " ").capitalize()


def dataset_title(dataset: str | None, version: int | None = None) -> str:
    if not dataset:
        return "non précisées"
    try:
        schema = schemas.load(dataset, version or schemas.latest(dataset))
    except schemas.UnknownDataset:
        return dataset
    return str(schema.get("title") or dataset)


def field_label(dataset: str | None, field: str, version: int | None = None) -> str:
    """The schema's title of a dotted field path, else the path made readable."""
    if field.startswith("derived."):
        return "réponse dérivée « " + field.removeprefix("derived.").replace("_", " ") + " »"
    node: Any = {}
    if dataset:
        try:
            node = schemas.load(dataset, version or schemas.latest(dataset))
        except schemas.UnknownDataset:
            node = {}
    for part in field.split("."):
        node = (node.get("properties") or {}).get(part, {}) if isinstance(node, dict) else {}
    title = node.get("title") if isinstance(node, dict) else None
    return str(title or field.replace("_", " ").replace(".", " — "))


def organisation_name(registry: Registry, siret: str | None) -> str:
    if not siret:
        return "administration non identifiée"
    org = registry.organisation(siret.split("/", 1)[0])
    return org.name if org else "administration inconnue du registre"


def render(request: web.Request, citizen: CitizenSession, template: str, *, active: str, title: str,
           status: int = 200, **context: Any) -> web.Response:
    """A portal page: the shared frame around `template`'s content."""
    issuer = urlsplit(request.config_dict[LOGIN_CONFIG].issuer)
    identity = citizen.identity
    return pages.render(
        template, status=status,
        # the logout form is redirected to the OP's end-session endpoint: form-action must allow it
        form_targets=[f"{issuer.scheme}://{issuer.netloc}"],
        title=title, nav=NAV, active=active, logout_path=LOGOUT_PATH, csrf_field=CSRF_FIELD,
        csrf=citizen.csrf_token, who=f"{identity.given_name} {identity.family_name.upper()}",
        session_ends=citizen.expires_at.astimezone(PARIS).strftime("%H:%M"), **context)


def not_found(request: web.Request, citizen: CitizenSession) -> web.Response:
    # another citizen's record is answered exactly as a missing one
    return render(request, citizen, "portal_message.html", active="", title="Page introuvable", status=404,
                  message="Cette page n'existe pas, ou elle ne vous concerne pas.")
