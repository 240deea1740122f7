"""The démarche's web application. State kept per visitor in memory (a real service would use its own sessions)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from broker.consumer.client import BrokerClient, BrokerProblem, OAuthFailed
from broker.signing.keys import PrivateKey

DATASET = "quotient_familial"
PURPOSE = "tarification-restauration-scolaire"
FIELDS = ("quotient_familial", "allocataires", "enfants", "adresse")
COOKIE = "cantine_visit"

# The commune's grid: (upper bound of the QF bracket, bracket, price of a meal in euros). Deliberately simple.
GRID: tuple[tuple[float, str, str], ...] = (
    (234, "A", "0,13"), (384, "B", "0,85"), (548, "C", "1,62"), (959, "D", "2,28"), (1370, "E", "3,62"),
    (1900, "F", "4,48"), (float("inf"), "G", "5,00"),
)


def price_bracket(qf: int | None) -> dict[str, str] | None:
    if qf is None:
        return None
    for upper, name, price in GRID:
        if qf <= upper:
            return {"tranche": name, "prix": price}
    return None


@dataclass
class Visit:
    state: str | None = None
    verifier: str | None = None
    prefill: dict[str, Any] = field(default_factory=dict)
    message: str | None = None


@dataclass
class Settings:
    broker_url: str
    key: PrivateKey
    siret: str
    base_url: str

    @property
    def redirect_uri(self) -> str:
        return self.base_url + "/retour"


SETTINGS = web.AppKey("settings", Settings)
CLIENT = web.AppKey("client", BrokerClient)
VISITS = web.AppKey("visits", dict)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def _visit(request: web.Request) -> tuple[str, Visit]:
    visits: dict[str, Visit] = request.app[VISITS]
    vid = request.cookies.get(COOKIE, "")
    if vid not in visits:
        vid = secrets.token_urlsafe(24)
        visits[vid] = Visit()
    return vid, visits[vid]


def _page(request: web.Request, vid: str, template: str, **ctx: Any) -> web.Response:
    html = request.app[TEMPLATES].get_template(template).render(**ctx)
    response = web.Response(text=html, content_type="text/html", headers={
        "Content-Security-Policy": "default-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'none'",
        "Cache-Control": "no-store"})
    response.set_cookie(COOKIE, vid, httponly=True, samesite="Lax", path="/")
    return response


async def form(request: web.Request) -> web.Response:
    vid, visit = _visit(request)
    message, visit.message = visit.message, None
    prefill = visit.prefill
    qf = (prefill.get("quotient_familial") or {}).get("valeur")
    return _page(request, vid, "form.html", data=prefill, bracket=price_bracket(qf), message=message, grid=GRID)


async def connect(request: web.Request) -> web.StreamResponse:
    """« Remplir avec mes données »: off to the broker's consent screen."""
    vid, visit = _visit(request)
    settings = request.app[SETTINGS]
    auth = request.app[CLIENT].authorization_request(redirect_uri=settings.redirect_uri, dataset=DATASET,
                                                     purpose=PURPOSE, fields=FIELDS, frequency="one_time",
                                                     duration_days=1)
    visit.state, visit.verifier = auth.state, auth.code_verifier
    response = web.HTTPFound(auth.url)
    response.set_cookie(COOKIE, vid, httponly=True, samesite="Lax", path="/")
    raise response


async def back(request: web.Request) -> web.StreamResponse:
    """The broker sends the parent back here with a code (consent given) or an error (refused)."""
    _, visit = _visit(request)
    settings = request.app[SETTINGS]
    q = request.query
    if not visit.state or not secrets.compare_digest(q.get("state", ""), visit.state) or visit.verifier is None:
        visit.message = "Le retour du service de partage n'a pas pu être vérifié. Remplissez le formulaire à la main."
        raise web.HTTPFound("/")
    verifier, visit.state, visit.verifier = visit.verifier, None, None
    if "error" in q:
        visit.message = ("Vous n'avez pas autorisé le partage de vos données : remplissez le formulaire vous-même."
                         if q["error"] == "access_denied" else "Le partage de vos données n'a pas abouti.")
        raise web.HTTPFound("/")
    client = request.app[CLIENT]
    try:
        tokens = await client.exchange_code(code=q.get("code", ""), code_verifier=verifier,
                                            redirect_uri=settings.redirect_uri)
        granted = tokens.authorization_details[0]["fields"] if tokens.authorization_details else list(FIELDS)
        answer = await client.exchange(dataset=DATASET, purpose=PURPOSE, recipient=settings.siret, fields=granted,
                                       access_token=tokens.access_token)
    except (OAuthFailed, BrokerProblem) as exc:
        visit.message = f"Le partage de vos données n'a pas abouti ({exc}). Remplissez le formulaire vous-même."
        raise web.HTTPFound("/") from None
    visit.prefill = answer.data
    visit.message = "Formulaire pré-rempli avec les données de la CAF ou de la MSA. Vérifiez-les avant d'envoyer."
    raise web.HTTPFound("/")


async def submit(request: web.Request) -> web.Response:
    vid, visit = _visit(request)
    posted = await request.post()
    summary = {k: str(v) for k, v in posted.items() if str(v).strip()}
    visit.prefill = {}
    return _page(request, vid, "done.html", summary=summary)


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with BrokerClient(settings.broker_url, key=settings.key, client_id=settings.siret) as client:
        app[CLIENT] = client
        yield


def create_app(*, broker_url: str, key: PrivateKey, siret: str, base_url: str) -> web.Application:
    app = web.Application()
    app[SETTINGS] = Settings(broker_url, key, siret, base_url.rstrip("/"))
    app[VISITS] = {}
    app[TEMPLATES] = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                        autoescape=True)
    app.cleanup_ctx.append(_client_ctx)
    app.router.add_get("/", form)
    app.router.add_get("/remplir", connect)
    app.router.add_get("/retour", back)
    app.router.add_post("/inscription", submit)
    return app


def flatten_children(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(data.get("enfants") or [])
