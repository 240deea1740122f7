"""The citizen's JSON API: my consents (list, revoke, signed receipt) and my objections to proactive exchanges.

Every route is authenticated as one citizen (the session cookie of the citizen login) and only ever touches rows of
that citizen's subject key: another citizen's consent id answers 404, as an unknown one does. State-changing calls
need the session's CSRF token in the `X-CSRF-Token` header.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from broker.citizen.login import citizen_required
from broker.errors import InvalidRequest
from broker.service.state import STATE
from broker.service.urls import issuer
from broker.storage import db
from consent import receipts, records
from consent.sessions import CitizenSession


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _consent_id(request: web.Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        return None


async def _own_consent(request: web.Request, citizen: CitizenSession) -> records.Consent:
    consent_id = _consent_id(request)
    consent = await records.get(request.app[STATE].pool, consent_id) if consent_id else None
    if consent is None or consent.subject_key != citizen.subject_key:
        raise web.HTTPNotFound()  # another citizen's consent is as unknown as a missing one
    return consent


@citizen_required(html_page=False)
async def list_consents(request: web.Request, citizen: CitizenSession) -> web.Response:
    now = datetime.now(UTC)
    consents = await records.of_subject(request.app[STATE].pool, citizen.subject_key)
    return _json({"consents": [c.public_json(now) for c in consents]})


@citizen_required(html_page=False)
async def get_consent(request: web.Request, citizen: CitizenSession) -> web.Response:
    consent = await _own_consent(request, citizen)
    body = consent.public_json(datetime.now(UTC))
    body["events"] = await records.events(request.app[STATE].pool, consent.id)
    return _json(body)


@citizen_required(html_page=False)
async def revoke_consent(request: web.Request, citizen: CitizenSession) -> web.Response:
    consent = await _own_consent(request, citizen)
    now = datetime.now(UTC)
    revoked = await records.revoke(request.app[STATE].pool, consent.id, citizen.subject_key, now)
    current = revoked or await records.get(request.app[STATE].pool, consent.id)
    assert current is not None
    return _json(current.public_json(now), status=200 if revoked else 409)


@citizen_required(html_page=False)
async def consent_receipt(request: web.Request, citizen: CitizenSession) -> web.Response:
    consent = await _own_consent(request, citizen)
    state = request.app[STATE]
    provider = state.registry.current.organisation(consent.provider)
    receipt = receipts.sign_receipt(consent, key=state.signing_key, issuer=issuer(request, state.config.public_url),
                                    provider_name=provider.name if provider else consent.provider,
                                    now=datetime.now(UTC))
    return web.Response(text=receipt, content_type="application/jwt", headers={
        "Content-Disposition": f'attachment; filename="recu-consentement-{consent.id}.jwt"',
        "Cache-Control": "no-store"})


@citizen_required(html_page=False)
async def list_objections(request: web.Request, citizen: CitizenSession) -> web.Response:
    state = request.app[STATE]
    registry = state.registry.current
    rows = await state.pool.fetch(db.queries()["objections_of_subject"], citizen.subject_key)
    objections = [{"id": str(r["id"]), "consumer": r["consumer"], "dataset": r["dataset"],
                   "created_at": r["created_at"].isoformat()} for r in rows]
    objectable = []
    for hab in registry.habilitations:
        if hab.legal_basis.type != "proactive":
            continue
        org = registry.organisation(hab.consumer)
        objected = any((o["consumer"] in (None, hab.consumer)) and (o["dataset"] in (None, hab.dataset))
                       for o in objections)
        objectable.append({"consumer": hab.consumer, "consumer_name": org.name if org else hab.consumer,
                           "dataset": hab.dataset, "purposes": list(hab.purposes),
                           "legal_basis": {"type": "proactive", "title": hab.legal_basis.title,
                                           "url": hab.legal_basis.url},
                           "objected": objected})
    return _json({"objections": objections, "proactive_exchanges": objectable})


@citizen_required(html_page=False)
async def add_objection(request: web.Request, citizen: CitizenSession) -> web.Response:
    try:
        raw = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raw = None
    consumer = raw.get("consumer") if isinstance(raw, dict) else None
    dataset = raw.get("dataset") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or set(raw) - {"consumer", "dataset"} or (consumer is None and dataset is None) \
            or not all(v is None or isinstance(v, str) for v in (consumer, dataset)):
        raise InvalidRequest('send {"consumer": SIRET} and/or {"dataset": id}')
    state = request.app[STATE]
    row = await state.pool.fetchrow(db.queries()["objection_insert"], uuid.uuid4(), citizen.subject_key, consumer,
                                    dataset)
    return _json({"created": row is not None, "consumer": consumer, "dataset": dataset}, status=201 if row else 200)


@citizen_required(html_page=False)
async def delete_objection(request: web.Request, citizen: CitizenSession) -> web.Response:
    objection_id = _consent_id(request)
    state = request.app[STATE]
    row = await state.pool.fetchrow(db.queries()["objection_delete"], objection_id, citizen.subject_key) \
        if objection_id else None
    if row is None:
        raise web.HTTPNotFound()
    return _json({"deleted": str(objection_id)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/citizen/api/consents", list_consents)
    app.router.add_get("/citizen/api/consents/{id}", get_consent)
    app.router.add_post("/citizen/api/consents/{id}/revoke", revoke_consent)
    app.router.add_get("/citizen/api/consents/{id}/receipt", consent_receipt)
    app.router.add_get("/citizen/api/objections", list_objections)
    app.router.add_post("/citizen/api/objections", add_objection)
    app.router.add_delete("/citizen/api/objections/{id}", delete_objection)
