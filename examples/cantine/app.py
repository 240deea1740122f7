"""The démarche's web application. State kept per visitor in memory (a real service would use its own sessions).

What a form service owes the citizen it pre-fills, shown here: next to each pre-filled value, where it comes from
(the provider, the member's title in the dataset's published schema, the day); every value stays editable; the
confirmation page names fields by the form's own labels and says which values the citizen kept as received and
which they changed. The labels of the data come from the dataset's JSON Schema as the broker publishes it
(`GET /v1/schemas/quotient_familial.v1.json`), read once at start: a form service needs nothing else.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import jinja2
from aiohttp import web

from broker.consumer.client import BrokerClient, BrokerProblem, OAuthFailed
from broker.signing.keys import PrivateKey
from schemas import labels

DATASET = "quotient_familial"
VERSION = 1
PURPOSE = "tarification-restauration-scolaire"
FIELDS = ("quotient_familial", "allocataires", "enfants", "adresse")
COOKIE = "cantine_visit"
DSFR = Path(__file__).resolve().parents[2] / "node_modules" / "@gouvfr" / "dsfr" / "dist"
PARIS = ZoneInfo("Europe/Paris")
MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
          "novembre", "décembre")

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


@dataclass(frozen=True, slots=True)
class Field:
    """One input of the form: its name, its label, and where a pre-filled value comes from in the dataset."""

    name: str
    label: str
    source: str | None = None
    """The dataset member it is filled from (for the provenance note), None for the form's own inputs."""
    kind: str = "text"


@dataclass
class Visit:
    state: str | None = None
    verifier: str | None = None
    prefill: dict[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None
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
SCHEMA = web.AppKey("schema", dict)


def form_fields(data: Mapping[str, Any]) -> list[Field]:
    """The form's inputs: the parent, the address, one line per child received (one empty otherwise), the QF."""
    children = max(1, len(data.get("enfants") or []))
    out = [Field("nom", "Nom", "allocataires[].nom_naissance"), Field("prenoms", "Prénoms", "allocataires[].prenoms"),
           Field("adresse", "Numéro et voie", "adresse.numero_libelle_voie"),
           Field("code_postal_ville", "Code postal et commune", "adresse.code_postal_ville")]
    for n in range(1, children + 1):
        out += [Field(f"enfant_{n}", f"Enfant {n} : prénoms et nom", "enfants[].prenoms"),
                Field(f"naissance_{n}", f"Enfant {n} : date de naissance", "enfants[].date_naissance", "date")]
    out.append(Field("quotient_familial", "Quotient familial", "quotient_familial.valeur", "number"))
    return out


def prefilled_values(data: Mapping[str, Any]) -> dict[str, str]:
    """The form's values from the dataset document, as the inputs take them (ISO dates for date inputs)."""
    if not data:
        return {}
    parent = (data.get("allocataires") or [{}])[0]
    address = data.get("adresse") or {}
    values = {
        "nom": parent.get("nom_naissance") or "", "prenoms": parent.get("prenoms") or "",
        "adresse": ", ".join(v for v in (address.get("numero_libelle_voie"), address.get("lieu_dit")) if v),
        "code_postal_ville": address.get("code_postal_ville") or "",
        "quotient_familial": str((data.get("quotient_familial") or {}).get("valeur", "")),
    }
    for n, child in enumerate(data.get("enfants") or [], 1):
        values[f"enfant_{n}"] = " ".join(v for v in (child.get("prenoms"), child.get("nom_naissance")) if v)
        birth = str(child.get("date_naissance") or "")
        values[f"naissance_{n}"] = birth if "-00" not in birth else ""  # a partial date does not fit a date input
    return {k: v for k, v in values.items() if v}


def _day(moment: datetime) -> str:
    d = moment.astimezone(PARIS).date()
    return f"{'1er' if d.day == 1 else d.day} {MONTHS[d.month - 1]} {d.year}"


def provenance(schema: Mapping[str, Any], data: Mapping[str, Any], source: str, received: datetime) -> str:
    """« Nom de naissance », transmis avec votre accord le 2 décembre 2026 ; source : Caisse d'allocations familiales
    (CAF)."""
    qf = labels.member(schema, "quotient_familial.fournisseur")
    fund = data.get("quotient_familial", {}).get("fournisseur")
    provider = (labels.enum_title(qf, schema, fund) if qf is not None and fund else None) or "la CAF ou la MSA"
    node = labels.member(schema, source)
    title = (labels.title_of(node, schema) if node is not None else None) or labels.readable(source)
    return f"« {title} », transmis avec votre accord le {_day(received)} ; source : {provider}."


def _visit(request: web.Request) -> tuple[str, Visit]:
    visits: dict[str, Visit] = request.app[VISITS]
    vid = request.cookies.get(COOKIE, "")
    if vid not in visits:
        vid = secrets.token_urlsafe(24)
        visits[vid] = Visit()
    return vid, visits[vid]


def _page(request: web.Request, vid: str, template: str, **ctx: Any) -> web.Response:
    html = request.app[TEMPLATES].get_template(template).render(dsfr=DSFR.is_dir(), **ctx)
    response = web.Response(text=html, content_type="text/html", headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'none'; "
                                   "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "Cache-Control": "no-store"})
    response.set_cookie(COOKIE, vid, httponly=True, samesite="Lax", path="/")
    return response


async def form(request: web.Request) -> web.Response:
    vid, visit = _visit(request)
    message, visit.message = visit.message, None
    data, schema = visit.prefill, request.app[SCHEMA]
    values = prefilled_values(data)
    received = visit.received_at or datetime.now(UTC)
    notes = {f.name: provenance(schema, data, f.source, received)
             for f in form_fields(data) if f.source and f.name in values}
    qf = (data.get("quotient_familial") or {}).get("valeur")
    return _page(request, vid, "form.html", data=data, fields=form_fields(data), values=values, notes=notes,
                 bracket=price_bracket(qf), message=message, grid=GRID,
                 broker_host=urlsplit(request.app[SETTINGS].broker_url).netloc)


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
    visit.prefill, visit.received_at = answer.data, datetime.now(UTC)
    visit.message = "Formulaire pré-rempli avec les données de la CAF ou de la MSA. Vérifiez-les avant d'envoyer."
    raise web.HTTPFound("/")


async def submit(request: web.Request) -> web.Response:
    vid, visit = _visit(request)
    posted = await request.post()
    received = prefilled_values(visit.prefill)
    summary = []
    for f in form_fields(visit.prefill):
        value = str(posted.get(f.name, "")).strip()
        if not value:
            continue
        origin = None if f.name not in received else "reçue" if received[f.name] == value else "modifiée"
        summary.append({"label": f.label, "value": value, "origin": origin})
    qf = str(posted.get("quotient_familial", "")).strip()
    bracket = price_bracket(int(qf)) if qf.isdigit() else None
    visit.prefill, visit.received_at = {}, None
    return _page(request, vid, "done.html", summary=summary, bracket=bracket)


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with BrokerClient(settings.broker_url, key=settings.key, client_id=settings.siret) as client:
        app[CLIENT] = client
        # the labels of the data: the dataset's schema, as the broker publishes it
        url = f"{settings.broker_url}/v1/schemas/{DATASET}.v{VERSION}.json"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            resp.raise_for_status()
            app[SCHEMA] = await resp.json(content_type=None)
        yield


def create_app(*, broker_url: str, key: PrivateKey, siret: str, base_url: str) -> web.Application:
    app = web.Application()
    app[SETTINGS] = Settings(broker_url.rstrip("/"), key, siret, base_url.rstrip("/"))
    app[VISITS] = {}
    app[TEMPLATES] = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                        autoescape=True, trim_blocks=True, lstrip_blocks=True)
    app.cleanup_ctx.append(_client_ctx)
    app.router.add_get("/", form)
    app.router.add_get("/remplir", connect)
    app.router.add_get("/retour", back)
    app.router.add_post("/inscription", submit)
    if DSFR.is_dir():
        app.router.add_static("/static/dsfr", DSFR)
    return app
