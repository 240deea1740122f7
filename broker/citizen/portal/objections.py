"""The citizen's objections (CRPA L114-8 II): the proactive exchanges of the registry they may object to, their
objections, objecting and withdrawing. The exchange pipeline refuses any proactive exchange an objection covers
(`consent.basis.verify_basis`), from the moment the objection row is committed."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web

from broker.citizen.login import citizen_required
from broker.citizen.portal.common import (
    dataset_title,
    field_label,
    not_found,
    organisation_name,
    purpose_label,
    render,
    when,
)
from broker.registry import Registry
from broker.service.state import STATE
from broker.storage import db
from consent.sessions import CitizenSession

LIST = "/citizen/oppositions"


def _covers(objection: asyncpg.Record, consumer: str, dataset: str) -> bool:
    return objection["consumer"] in (None, consumer) and objection["dataset"] in (None, dataset)


def _scope(objection: asyncpg.Record, registry: Registry) -> str:
    consumer, dataset = objection["consumer"], objection["dataset"]
    if consumer and dataset:
        return f"{organisation_name(registry, consumer)} — {dataset_title(dataset)}"
    if consumer:
        return f"Tous les échanges proactifs de {organisation_name(registry, consumer)}"
    return f"Toutes les administrations — {dataset_title(dataset)}"


def _exchanges(registry: Registry, objections: list[asyncpg.Record]) -> list[dict[str, Any]]:
    out = []
    for hab in registry.habilitations:
        if hab.legal_basis.type != "proactive":
            continue
        covering = [o for o in objections if _covers(o, hab.consumer, hab.dataset)]
        exact = next((o for o in covering if (o["consumer"], o["dataset"]) == (hab.consumer, hab.dataset)), None)
        out.append({
            "consumer": hab.consumer, "consumer_name": organisation_name(registry, hab.consumer),
            "dataset": hab.dataset, "dataset_title": dataset_title(hab.dataset),
            "purposes": [purpose_label(registry, p) for p in hab.purposes],
            "fields": [field_label(hab.dataset, f, hab=hab) for f in hab.fields],
            "basis_title": hab.legal_basis.title, "basis_url": hab.legal_basis.url,
            "objected": bool(covering),
            "objection_id": str(exact["id"]) if exact else None,
            "since": when(covering[0]["created_at"]) if covering else None,
        })
    return sorted(out, key=lambda x: (x["consumer_name"], x["dataset_title"]))


@citizen_required(html_page=True)
async def objections_page(request: web.Request, citizen: CitizenSession) -> web.Response:
    state = request.app[STATE]
    registry = state.registry.current
    rows = list(await state.pool.fetch(db.queries()["objections_of_subject"], citizen.subject_key))
    mine = [{"id": str(o["id"]), "scope": _scope(o, registry), "since": when(o["created_at"])} for o in rows]
    notice = {"enregistree": "Votre opposition est enregistrée : ces échanges seront refusés.",
              "retiree": "Votre opposition est retirée."}.get(request.query.get("fait", ""))
    return render(request, citizen, "portal_objections.html", active="oppositions", title="Mes oppositions",
                  exchanges=_exchanges(registry, rows), objections=mine, notice=notice)


def _done(what: str) -> web.Response:
    return web.Response(status=303, headers={"Location": f"{LIST}?fait={what}", "Cache-Control": "no-store"})


@citizen_required(html_page=True)  # and CSRF-checked: form field "csrf"
async def object_to(request: web.Request, citizen: CitizenSession) -> web.StreamResponse:
    form = await request.post()
    consumer, dataset = form.get("consumer"), form.get("dataset")
    state = request.app[STATE]
    # only what the page offers: an exchange of the registry with a proactive basis
    hab = state.registry.current.habilitation(consumer, dataset) \
        if isinstance(consumer, str) and isinstance(dataset, str) else None
    if hab is None or hab.legal_basis.type != "proactive":
        return not_found(request, citizen)
    await state.pool.execute(db.queries()["objection_insert"], uuid.uuid4(), citizen.subject_key, hab.consumer,
                             hab.dataset)
    return _done("enregistree")


@citizen_required(html_page=True)  # and CSRF-checked: form field "csrf"
async def withdraw(request: web.Request, citizen: CitizenSession) -> web.StreamResponse:
    try:
        objection_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return not_found(request, citizen)
    row = await request.app[STATE].pool.fetchrow(db.queries()["objection_delete"], objection_id,
                                                 citizen.subject_key)
    if row is None:  # unknown, or another citizen's
        return not_found(request, citizen)
    return _done("retiree")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(LIST, objections_page)
    router.add_post(LIST, object_to)
    router.add_post(LIST + "/{id}/retrait", withdraw)
