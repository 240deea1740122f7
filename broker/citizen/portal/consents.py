"""The citizen's consents: listed by state, revoked after a confirmation page (no JavaScript needed), receipts.

Revocation goes through `consent.records.revoke`, the same atomic statement as the JSON API: the next exchange
using the consent is refused, on every broker process.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from broker.citizen.login import citizen_required
from broker.citizen.portal.common import (
    CONSENT_STATES,
    dataset_title,
    field_label,
    habilitation,
    not_found,
    organisation_name,
    purpose_label,
    render,
    when,
)
from broker.registry import Registry
from broker.service.state import STATE
from consent import records
from consent.sessions import CitizenSession

LIST = "/citizen/consentements"
_ORDER = ("active", "used_up", "expired", "revoked", "refused")
_GROUPS = {
    "active": "En cours",
    "used_up": "Utilisés (consentements pour une seule fois)",
    "expired": "Expirés",
    "revoked": "Retirés",
    "refused": "Refusés",
}


def _view(c: records.Consent, registry: Registry, now: datetime) -> dict[str, Any]:
    state = c.state_at(now)
    hab = habilitation(registry, c.habilitation_id)
    recipient_org = registry.organisation(c.recipient.split("/", 1)[0])
    return {
        "id": str(c.id),
        "state": state,
        "state_label": CONSENT_STATES[state],
        "controller": c.controller,
        "controller_name": c.controller_name,
        "recipient": None if c.recipient == c.controller else (
            f"{recipient_org.name if recipient_org else c.recipient}, service « {c.recipient.split('/', 1)[1]} »"
            if "/" in c.recipient else organisation_name(registry, c.recipient)),
        "dataset_title": dataset_title(c.dataset, c.dataset_version),
        "provider": c.provider,
        "provider_name": organisation_name(registry, c.provider),
        "purpose": purpose_label(registry, c.purpose),
        "fields": [field_label(c.dataset, f, c.dataset_version, hab) for f in c.fields],
        "fields_refused": [field_label(c.dataset, f, c.dataset_version, hab) for f in c.fields_refused],
        "basis_title": c.legal_basis_title,
        "basis_url": c.legal_basis_url,
        "one_time": c.frequency == "one_time",
        "uses": c.uses,
        "created": when(c.created_at),
        "expires": when(c.expires_at),
        "revoked": when(c.revoked_at) if c.revoked_at else None,
        "last_used": when(c.last_used_at) if c.last_used_at else None,
        "given": when(c.decided_at or c.created_at),
        "receipt_url": f"/citizen/api/consents/{c.id}/receipt",
        "receipt_page": f"{LIST}/{c.id}/recu",
        "revoke_url": f"{LIST}/{c.id}/retrait",
    }


async def _own(request: web.Request, citizen: CitizenSession) -> records.Consent | None:
    try:
        consent_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return None
    consent = await records.get(request.app[STATE].pool, consent_id)
    if consent is None or consent.subject_key != citizen.subject_key:
        return None
    return consent


@citizen_required(html_page=True)
async def consents_page(request: web.Request, citizen: CitizenSession) -> web.Response:
    state = request.app[STATE]
    now = datetime.now(UTC)
    registry = state.registry.current
    views = [_view(c, registry, now) for c in await records.of_subject(state.pool, citizen.subject_key)]
    groups = [(s, _GROUPS[s], [v for v in views if v["state"] == s]) for s in _ORDER]
    revoked = request.query.get("retire")
    notice = next((v for v in views if v["id"] == revoked and v["state"] == "revoked"), None)
    return render(request, citizen, "portal_consents.html", active="consentements", title="Mes consentements",
                  groups=[g for g in groups if g[2]], total=len(views), notice=notice)


@citizen_required(html_page=True)
async def revoke_confirm(request: web.Request, citizen: CitizenSession) -> web.Response:
    consent = await _own(request, citizen)
    if consent is None:
        return not_found(request, citizen)
    view = _view(consent, request.app[STATE].registry.current, datetime.now(UTC))
    return render(request, citizen, "portal_revoke.html", active="consentements",
                  title=f"Retirer votre consentement à {consent.controller_name}", consent=view)


@citizen_required(html_page=True)
async def receipt_page(request: web.Request, citizen: CitizenSession) -> web.Response:
    """The receipt as a page to read and print: what was shared, with whom, why, until when, how to withdraw; and
    the signed receipt, downloaded or checked in the browser against the broker's published keys."""
    consent = await _own(request, citizen)
    if consent is None:
        return not_found(request, citizen)
    view = _view(consent, request.app[STATE].registry.current, datetime.now(UTC))
    return render(request, citizen, "portal_receipt.html", active="consentements",
                  title=f"Reçu de votre consentement à {consent.controller_name}", consent=view,
                  jwks_url="/.well-known/jwks.json")


@citizen_required(html_page=True)  # and CSRF-checked: form field "csrf"
async def revoke(request: web.Request, citizen: CitizenSession) -> web.StreamResponse:
    consent = await _own(request, citizen)
    if consent is None:
        return not_found(request, citizen)
    await records.revoke(request.app[STATE].pool, consent.id, citizen.subject_key, datetime.now(UTC))
    # Post/Redirect/Get; an already revoked (or expired) consent simply shows in its group
    return web.Response(status=303, headers={"Location": f"{LIST}?retire={consent.id}", "Cache-Control": "no-store"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(LIST, consents_page)
    router.add_get(LIST + "/{id}/retrait", revoke_confirm)
    router.add_get(LIST + "/{id}/recu", receipt_page)
    router.add_post(LIST + "/{id}/retrait", revoke)
