"""What every portal page shares: the page frame (navigation, session, logout form), and the labels citizens read in
place of ids: datasets and fields by their schema titles (`schemas.labels`), purposes by their registry labels,
derived answers by the question they answer, organisations by name, times in Paris."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

import schemas
from broker.citizen import formatting, pages
from broker.citizen.formatting import PARIS
from broker.citizen.login import LOGIN_CONFIG, LOGOUT_PATH
from broker.registry import Habilitation, Registry
from broker.registry.derived import PREFIX
from broker.service.state import STATE
from broker.tlog.accesslog import PREVIEW_PURPOSE
from consent.sessions import CSRF_FIELD, CitizenSession
from schemas import labels

__all__ = ["PARIS"]

NAV = (
    ("accueil", "/citizen/", "Accueil"),
    ("journal", "/citizen/journal", "Journal des accès"),
    ("consentements", "/citizen/consentements", "Mes consentements"),
    ("oppositions", "/citizen/oppositions", "Mes oppositions"),
    ("notifications", "/citizen/notifications", "Être prévenu·e"),
)

LEGAL_BASES = {
    "information": "Information",  # CRPA L114-8 I: mandatory for the démarche, the citizen is informed
    "proactive": "Démarche proactive",  # L114-8 II: to detect entitlements, the citizen may object
    "consent": "Consentement",
}
CONSENT_STATES = {
    "active": ("En cours", "success"),
    "used_up": ("Utilisé", "info"),
    "expired": ("Expiré", "new"),
    "revoked": ("Retiré", "warning"),
    "refused": ("Refusé", "error"),
}
PREVIEW_LABEL = "Vous montrer vos données avant que vous décidiez de les partager"
"""The purpose of the consent screen's preview: the broker's own, in no registry."""


def when(moment: datetime) -> str:
    """« 22 novembre 2026 à 15 h 57 », in Paris time."""
    return formatting.moment_fr(moment)


def day(moment: datetime) -> str:
    """« 22 novembre 2026 », in Paris time."""
    return formatting.day_fr(moment.astimezone(PARIS).date())


def purpose_label(registry: Registry, purpose: str | None) -> str:
    """The registry's label of a purpose; an unlabelled one is its id made readable."""
    if not purpose:
        return "non précisée"
    if purpose == PREVIEW_PURPOSE:
        return PREVIEW_LABEL
    found = registry.purpose(purpose)
    return found.label if found else labels.readable(purpose.replace("-", "_"))


def dataset_title(dataset: str | None, version: int | None = None) -> str:
    if not dataset:
        return "non précisées"
    return labels.dataset_title(dataset, version) or labels.readable(dataset)


def field_label(dataset: str | None, field: str, version: int | None = None,
                hab: Habilitation | None = None) -> str:
    """The schema's title of a dotted field path, or the question a derived answer answers."""
    if field.startswith(PREFIX):
        rule = hab.derived_rule(field) if hab else None
        if rule is None:
            return "Réponse calculée « " + field.removeprefix(PREFIX).replace("_", " ") + " »"
        schema = schemas.load(dataset, version or schemas.latest(dataset)) if dataset in schemas.catalogue() else None
        return formatting.derived_question(rule, schema)
    return labels.field_title(dataset, field, version) or labels.readable(field)


def habilitation(registry: Registry, habilitation_id: object) -> Habilitation | None:
    return next((h for h in registry.habilitations if h.id == habilitation_id), None) if habilitation_id else None


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
    mail = request.app[STATE].config.mail is not None
    nav = [n for n in NAV if mail or n[0] != "notifications"]
    return pages.render(
        template, status=status,
        # the logout form is redirected to the OP's end-session endpoint: form-action must allow it
        form_targets=[f"{issuer.scheme}://{issuer.netloc}"],
        title=title, nav=nav, active=active, logout_path=LOGOUT_PATH, csrf_field=CSRF_FIELD,
        csrf=citizen.csrf_token, who=f"{identity.given_name} {identity.family_name.upper()}",
        session_ends=formatting.time_fr(citizen.expires_at), **context)


def not_found(request: web.Request, citizen: CitizenSession) -> web.Response:
    # another citizen's record is answered exactly as a missing one
    return render(request, citizen, "portal_message.html", active="", title="Page introuvable", status=404,
                  message="Cette page n'existe pas, ou elle ne vous concerne pas.")
