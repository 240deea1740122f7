"""A DGFiP-like sandbox: income-tax notice items (revenu fiscal de référence) by civil status or numéro fiscal.

The real API Impôt particulier is restricted and its contract is not public, so this is not a copy of it: it is
a plain JSON-over-HTTP provider in the DGFiP's vocabulary (camelCase members, the notice's family-status
letters), there to exercise the declarative `http_json` adapter against something that does not look like API
Particulier. Its contract:

``GET /v1/revenu-fiscal`` with ``nomNaissance``, ``prenoms`` (space-separated), ``dateNaissance``
(AAAA-MM-JJ, 00 for an unknown day or month), ``sexe`` (M/F), ``codeLieuNaissance`` (COG commune code, or COG
country code when born abroad) and optional ``anneeRevenus``; ``GET /v1/revenu-fiscal/spi/{spi}`` with
optional ``anneeRevenus``; ``POST /v1/revenu-fiscal/recherche`` with the same civil status as a JSON body,
``{"contribuable": {"nomNaissance", "prenoms": [...], "dateNaissance", "sexe", "codeLieuNaissance"},
"anneeRevenus"?}`` (``prenoms`` an array of first names, ``anneeRevenus`` a string). The key goes in the
``X-Api-Key`` header. Served over TLS with a client-certificate requirement, it plays a provider that also
asks for mutual TLS (tests/test_http_json_mtls.py).

``200`` ``{"spi", "anneeRevenus", "anneeImpots", "revenuFiscalReference", "nombreParts", "situationFamille",
"nombrePersonnesCharge"}`` (latest income year unless ``anneeRevenus`` says otherwise); errors are
``{"code": ..., "message": ...}``: 401 NON_AUTORISE, 400 PARAMETRE_INVALIDE, 404 NON_TROUVE,
409 IDENTITE_AMBIGUE (several taxpayers match), 503 INDISPONIBLE, 504 DELAI_DEPASSE. Fault citizens behave
as documented in `adapters.sandbox`.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from adapters.sandbox import DEFAULT_SLOW_DELAY, Citizen, CivilQuery, Directory, directory, serve

TOKEN = web.AppKey("dgfip_token", str)
DIRECTORY = web.AppKey("dgfip_directory", Directory)
SLOW_DELAY = web.AppKey("dgfip_slow_delay", float)

_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_LIEU = re.compile(r"^(99[0-9]{3}|[0-9][0-9AB][0-9]{3})$")
_SPI = re.compile(r"^[0-9]{13}$")


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _invalid(message: str) -> _Refused:
    return _Refused(error(400, "PARAMETRE_INVALIDE", message))


def civil_query(request: web.Request) -> CivilQuery:
    q = request.query
    return _civil(q.get("nomNaissance", ""), q.get("prenoms", "").split(), q.get("dateNaissance", ""),
                  q.get("sexe"), q.get("codeLieuNaissance", ""))


def _civil(birth_name: str, first_names: list[str], date: str, sex: str | None, lieu: str) -> CivilQuery:
    birth_name = birth_name.strip()
    if not birth_name or not first_names:
        raise _invalid("nomNaissance et prenoms sont obligatoires")
    m = _DATE.match(date)
    if m is None:
        raise _invalid("dateNaissance doit être au format AAAA-MM-JJ")
    year, month, day = (int(g) for g in m.groups())
    if sex not in ("M", "F"):
        raise _invalid("sexe doit valoir M ou F")
    if not _LIEU.match(lieu):
        raise _invalid("codeLieuNaissance doit être un code COG de commune ou de pays")
    abroad = lieu.startswith("99")
    # 00 is an explicit "unknown", which matches only an unknown day or month, unlike an omitted parameter.
    return CivilQuery(birth_name=birth_name, first_names=first_names, year=year, month=month, day=day, sex=sex,
                      birth_commune=None if abroad else lieu, birth_country=lieu if abroad else "99100")


def _notice(c: Citizen, year: str | None) -> dict[str, Any] | None:
    record = c.records.get("dgfip_record")
    if record is None or not record["avis"]:
        return None
    notices = [a for a in record["avis"] if year is None or str(a["anneeRevenus"]) == year]
    if not notices:
        return None
    latest = max(notices, key=lambda a: str(a["anneeRevenus"]))
    return {"spi": record["spi"], **latest}


def _authorized(request: web.Request) -> bool:
    presented = request.headers.get("X-Api-Key", "")
    return bool(presented) and hmac.compare_digest(presented.encode(), request.app[TOKEN].encode())


async def _answer(request: web.Request, find: Callable[[web.Request], Citizen | None],
                  year: Any = None) -> web.StreamResponse:
    if not _authorized(request):
        return error(401, "NON_AUTORISE", "Clé d'API absente ou invalide")
    if year is not None and not (isinstance(year, str) and year.isdigit() and len(year) == 4):
        return error(400, "PARAMETRE_INVALIDE", "anneeRevenus doit être une année")
    try:
        citizen = find(request)
    except _Refused as refused:
        return refused.response
    if citizen is not None and citizen.fault == "unavailable":
        return error(503, "INDISPONIBLE", "Service momentanément indisponible")
    if citizen is not None and citizen.fault == "upstream_timeout":
        return error(504, "DELAI_DEPASSE", "Le système d'information fiscal n'a pas répondu à temps")
    if citizen is not None and citizen.fault == "not_json":
        return web.Response(status=200, content_type="text/html", text="<html><body>Maintenance</body></html>")
    if citizen is not None and citizen.fault == "slow":
        await asyncio.sleep(request.app[SLOW_DELAY])
    notice = _notice(citizen, year) if citizen is not None else None
    if notice is None:
        return error(404, "NON_TROUVE", "Aucun avis d'impôt pour ces critères")
    return web.json_response(notice)


def _one(request: web.Request, query: CivilQuery) -> Citizen | None:
    found = request.app[DIRECTORY].match(query)
    if len(found) > 1:
        raise _Refused(error(409, "IDENTITE_AMBIGUE", "Plusieurs contribuables correspondent à cet état civil"))
    return found[0] if found else None


async def by_civil_status(request: web.Request) -> web.StreamResponse:
    return await _answer(request, lambda req: _one(req, civil_query(req)), request.query.get("anneeRevenus"))


async def by_civil_status_posted(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return error(401, "NON_AUTORISE", "Clé d'API absente ou invalide")
    if request.content_type != "application/json":
        return error(400, "PARAMETRE_INVALIDE", "le corps doit être du JSON (application/json)")
    try:
        body = await request.json()
    except ValueError:
        return error(400, "PARAMETRE_INVALIDE", "le corps n'est pas du JSON valide")
    who = body.get("contribuable") if isinstance(body, dict) else None
    if not isinstance(who, dict):
        return error(400, "PARAMETRE_INVALIDE", "le corps doit contenir l'objet contribuable")

    def find(req: web.Request) -> Citizen | None:
        names = who.get("prenoms")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _invalid("prenoms doit être un tableau de prénoms")
        # A missing or non-string member reads as "", which `_civil` refuses like an empty query parameter.
        text = {k: v if isinstance(v := who.get(k), str) else "" for k in
                ("nomNaissance", "dateNaissance", "sexe", "codeLieuNaissance")}
        return _one(req, _civil(text["nomNaissance"], names, text["dateNaissance"], text["sexe"],
                                text["codeLieuNaissance"]))

    return await _answer(request, find, body.get("anneeRevenus"))


async def by_spi(request: web.Request) -> web.StreamResponse:
    def find(req: web.Request) -> Citizen | None:
        spi = req.match_info["spi"]
        if not _SPI.match(spi):
            raise _invalid("le numéro fiscal compte 13 chiffres")
        return req.app[DIRECTORY].by_spi(spi)

    return await _answer(request, find, request.query.get("anneeRevenus"))


def create_app(token: str, *, slow_delay: float = DEFAULT_SLOW_DELAY,
               citizens: Directory | None = None) -> web.Application:
    """The DGFiP sandbox; mount it under a prefix (`python -m adapters.sandbox` uses /dgfip) or serve it alone."""
    if not token:
        raise ValueError("the sandbox needs a non-empty token")
    app = web.Application()
    app[TOKEN] = token
    app[DIRECTORY] = citizens if citizens is not None else directory()
    app[SLOW_DELAY] = float(slow_delay)
    app.router.add_get("/v1/revenu-fiscal", by_civil_status)
    app.router.add_post("/v1/revenu-fiscal/recherche", by_civil_status_posted)
    app.router.add_get("/v1/revenu-fiscal/spi/{spi}", by_spi)
    return app


async def start_sandbox(token: str, *, host: str = "127.0.0.1", port: int = 0,
                        slow_delay: float = DEFAULT_SLOW_DELAY) -> tuple[web.AppRunner, str]:
    """Serve the DGFiP sandbox alone on host:port (0: a free port); returns the runner and the base URL."""
    return await serve(create_app(token, slow_delay=slow_delay), host=host, port=port)
