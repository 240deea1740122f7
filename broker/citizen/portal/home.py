"""The portal's home page: who is logged in, until when, and the three places to go."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from broker.citizen.login import citizen_required
from broker.citizen.portal.common import render
from broker.service.state import STATE
from broker.storage import db
from consent import records
from consent.sessions import CitizenSession


@citizen_required(html_page=True)
async def home(request: web.Request, citizen: CitizenSession) -> web.Response:
    state = request.app[STATE]
    now = datetime.now(UTC)
    consents = await records.of_subject(state.pool, citizen.subject_key)
    objections = await state.pool.fetch(db.queries()["objections_of_subject"], citizen.subject_key)
    return render(request, citizen, "portal_home.html", active="accueil", title="Mes données",
                  active_consents=sum(1 for c in consents if c.state_at(now) == "active"),
                  objections=len(objections))
