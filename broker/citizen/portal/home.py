"""The portal's home: for a visitor, what « Mes données » is and the FranceConnect button; for a logged-in citizen,
who they are, until when, and the places to go."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from broker.citizen import pages
from broker.citizen.login import LOGIN_CONFIG
from broker.citizen.portal.common import render
from broker.service.state import STATE
from broker.storage import db
from consent import records
from consent.sessions import DEFAULT_NEXT, LOGIN_PATH, current_citizen


async def home(request: web.Request) -> web.Response:
    citizen = await current_citizen(request)
    if citizen is None:
        # a page, not a redirect to the identity provider: the citizen learns where they are before leaving.
        # The button's form is redirected to the identity provider: form-action must allow its origin.
        login = request.config_dict[LOGIN_CONFIG]
        issuer = urlsplit(login.issuer)
        return pages.render("portal_login.html", title="Connexion à « Mes données »", login_path=LOGIN_PATH,
                            next_path=DEFAULT_NEXT, form_targets=[f"{issuer.scheme}://{issuer.netloc}"],
                            provider_name=login.provider_name, franceconnect=login.preset.startswith("franceconnect"),
                            plus=login.preset == "franceconnect-plus")
    state = request.app[STATE]
    now = datetime.now(UTC)
    consents = await records.of_subject(state.pool, citizen.subject_key)
    objections = await state.pool.fetch(db.queries()["objections_of_subject"], citizen.subject_key)
    return render(request, citizen, "portal_home.html", active="accueil", title="Mes données",
                  active_consents=sum(1 for c in consents if c.state_at(now) == "active"),
                  objections=len(objections))
