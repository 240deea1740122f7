"""A sandbox speaking API Entreprise (https://entreprise.api.gouv.fr, v3 and v4), on synthetic businesses.

It answers the real paths with the real mandatory query parameters (`context`, `object`, `recipient`), the real
bearer-token check, the real envelope (`{"data", "links", "meta"}`, list endpoints as a list of such envelopes)
and the real error shape (`{"errors": [{"code", "title", "detail", "source", "meta"}]}`), so the production
adapter is tested against it unchanged. Every answer is the reference OpenAPI's example for its endpoint
(`api_entreprise_reference.json`, extracted from the published document), with the business's identifiers put in
and the members written in `businesses.json` merged over it: the values are fictitious, as upstream's own staging
answers are.

Error codes are upstream's: ``<provider><3 digits>``, the provider's two digits taken from the reference document
(01 INSEE, 02 Infogreffe, 03 DGFiP, 04 URSSAF...), with 001 unavailable, 002 timed out, 003 not found, 999 unknown
provider error; ``0020x`` a missing `context`, `object` or `recipient`; ``00301``/``00302``/``00333``/``00307`` a
malformed SIREN, SIRET, SIREN-or-RNA or year; ``00101`` a bad token; ``00429`` too many requests.

Deliberate differences from upstream, all documented:

* a business that objected to the publication of its data answers 451 on the public (``diffusibles``) Sirene
  endpoints, with the sandbox's code ``01451``: upstream documents the status without a code or an example;
* `recipient` must be a SIRET with valid check digits, but is not checked against any directory;
* there is no rate limiting, only the ``rate_limited`` business, which always answers 429 with ``Retry-After: 30``.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from adapters.identity import valid_siren, valid_siret
from adapters.sandbox import DEFAULT_SLOW_DELAY, serve

FAULTS = frozenset({"rate_limited", "upstream_timeout", "unavailable", "provider_error", "slow"})
RATE_LIMIT_RETRY_AFTER = 30

# The endpoints served, by the name `businesses.json` uses for their answers (the broker's dataset ids).
ENDPOINTS: Mapping[str, str] = {
    "unite_legale": "/v4/insee/sirene/unites_legales/{siren}",
    "unite_legale_diffusible": "/v4/insee/sirene/unites_legales/diffusibles/{siren}",
    "etablissement": "/v4/insee/sirene/etablissements/{siret}",
    "etablissement_diffusible": "/v4/insee/sirene/etablissements/diffusibles/{siret}",
    "attestation_vigilance": "/v4/urssaf/unites_legales/{siren}/attestation_vigilance",
    "attestation_fiscale": "/v4/dgfip/unites_legales/{siren}/attestation_fiscale",
    "extrait_kbis": "/v3/infogreffe/rcs/unites_legales/{siren}/extrait_kbis",
    "mandataires_sociaux": "/v3/infogreffe/rcs/unites_legales/{siren}/mandataires_sociaux",
    "extrait_rne": "/v3/inpi/rne/unites_legales/{siren}/extrait_rne",
    "beneficiaires_effectifs": "/v3/inpi/rne/unites_legales/{siren}/beneficiaires_effectifs",
    "association": "/v4/djepva/api-association/associations/{siren_or_rna}",
    "effectifs_annuels": "/v3/gip_mds/unites_legales/{siren}/effectifs_annuels/{year}",
    "certification_qualibat": "/v4/qualibat/etablissements/{siret}/certification_batiment",
    "certification_rge": "/v3/ademe/etablissements/{siret}/certification_rge",
    "certification_qualiopi": "/v3/carif_oref/etablissements/{siret}/certifications_qualiopi_france_competences",
    "certification_opqibi": "/v3/opqibi/unites_legales/{siren}/certification_ingenierie",
    "certification_qualifelec": "/v3/qualifelec/etablissements/{siret}/certificats",
    "conformite_cotisations_msa": "/v3/msa/etablissements/{siret}/conformite_cotisations",
    "conformite_cotisations_probtp": "/v3/probtp/etablissements/{siret}/conformite_cotisations_retraite",
    "numero_tva": "/v3/european_commission/unites_legales/{siren}/numero_tva",
}
PUBLIC_SIRENE = frozenset({"unite_legale_diffusible", "etablissement_diffusible"})
_RNA = re.compile(r"^W[0-9][0-9AB][0-9]{7}$")
_YEAR = re.compile(r"^[0-9]{4}$")

@dataclass(frozen=True, slots=True)
class Business:
    id: str
    tests: str
    siren: str
    name: str
    # SIRET -> {"siege": bool, "closed": "YYYY-MM-DD"}
    sirets: Mapping[str, Mapping[str, Any]]
    rna: str | None = None
    diffusion: str = "diffusible"
    fault: str | None = None
    verbatim: bool = False
    missing: frozenset[str] = frozenset()
    answers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def head_office(self) -> str:
        return next(s for s, info in self.sirets.items() if info.get("siege"))


@dataclass(frozen=True, slots=True)
class Businesses:
    businesses: tuple[Business, ...]
    # endpoint path -> {"query", "data", "errors"} from the reference OpenAPI
    reference: Mapping[str, Any]

    def by_siren(self, siren: str) -> Business | None:
        return next((b for b in self.businesses if b.siren == siren), None)

    def by_siret(self, siret: str) -> Business | None:
        return next((b for b in self.businesses if siret in b.sirets), None)

    def by_rna(self, rna: str) -> Business | None:
        return next((b for b in self.businesses if b.rna == rna), None)


TOKEN = web.AppKey("token", str)
BUSINESSES = web.AppKey("businesses", Businesses)
SLOW_DELAY = web.AppKey("slow_delay", float)


def _business(raw: Mapping[str, Any]) -> Business:
    bid = raw["id"]
    known = {"id", "tests", "siren", "name", "sirets", "rna", "diffusion", "fault", "verbatim", "missing", "answers"}
    if set(raw) - known:
        raise ValueError(f"business {bid}: unknown members {sorted(set(raw) - known)}")
    if not valid_siren(raw["siren"]):
        raise ValueError(f"business {bid}: SIREN {raw['siren']} has a wrong check digit")
    for siret in raw["sirets"]:
        if not valid_siret(siret) or not siret.startswith(raw["siren"]):
            raise ValueError(f"business {bid}: SIRET {siret} is not a valid SIRET of its SIREN")
    if sum(bool(info.get("siege")) for info in raw["sirets"].values()) != 1:
        raise ValueError(f"business {bid}: exactly one SIRET is the head office")
    if raw.get("rna") is not None and not _RNA.match(raw["rna"]):
        raise ValueError(f"business {bid}: RNA {raw['rna']} is malformed")
    if raw.get("fault") is not None and raw["fault"] not in FAULTS:
        raise ValueError(f"business {bid}: unknown fault {raw['fault']!r}")
    for name in (*raw.get("answers", {}), *raw.get("missing", ())):
        if name not in ENDPOINTS:
            raise ValueError(f"business {bid}: unknown endpoint {name!r}")
    return Business(id=bid, tests=raw["tests"], siren=raw["siren"], name=raw["name"], sirets=raw["sirets"],
                    rna=raw.get("rna"), diffusion=raw.get("diffusion", "diffusible"), fault=raw.get("fault"),
                    verbatim=bool(raw.get("verbatim", False)), missing=frozenset(raw.get("missing", ())),
                    answers=raw.get("answers", {}))


def load_businesses(text: str, reference_text: str) -> Businesses:
    businesses = tuple(_business(b) for b in json.loads(text)["businesses"])
    sirens = [b.siren for b in businesses]
    if len(set(sirens)) != len(sirens):
        raise ValueError("businesses.json: a SIREN appears twice")
    reference = json.loads(reference_text)["endpoints"]
    missing = set(ENDPOINTS.values()) - set(reference)
    if missing:
        raise ValueError(f"api_entreprise_reference.json lacks {sorted(missing)}")
    return Businesses(businesses, reference)


@cache
def businesses() -> Businesses:
    """The businesses shipped with the package."""
    package = resources.files("adapters.sandbox")
    return load_businesses(package.joinpath("businesses.json").read_text("utf-8"),
                           package.joinpath("api_entreprise_reference.json").read_text("utf-8"))


# ---------------------------------------------------------------------------------------------- errors


def error(status: int, code: str, title: str, detail: str, *, parameter: str | None = None,
          meta: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"errors": [{"code": code, "title": title, "detail": detail,
                        "source": {"parameter": parameter} if parameter else None, "meta": dict(meta or {})}]}
    return web.json_response(body, status=status, headers=headers)


def _unprocessable(code: str, detail: str, parameter: str) -> web.Response:
    return error(422, code, "Entité non traitable", detail, parameter=parameter)


def _reference_error(reference: Mapping[str, Any], status: int, suffix: str) -> tuple[str, str, str, dict[str, Any]]:
    """Code, title, detail and meta of the endpoint's documented error with that status and code suffix."""
    for e in reference["errors"]:
        if e["status"] == status and e["code"] and e["code"].endswith(suffix) and not e["code"].startswith("00"):
            return e["code"], e["title"], e["detail"], dict(e.get("meta") or {})
    raise LookupError(f"no documented {status} error ending in {suffix}")


# ---------------------------------------------------------------------------------------------- answers


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base.get(key), value)
        return out
    return copy.deepcopy(patch)


def _timestamp(day: str) -> int:
    return int(datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp())


def _identify(name: str, data: dict[str, Any], b: Business, request: web.Request) -> dict[str, Any]:
    """Put the business's identifiers, name, status and diffusion into the reference example."""
    public = b.diffusion == "diffusible"
    if name.startswith("unite_legale"):
        data.update(siren=b.siren, siret_siege_social=b.head_office, rna=b.rna, status_diffusion=b.diffusion,
                    diffusable_commercialement=public, etat_administratif="A")
        data["personne_morale_attributs"] = {**data["personne_morale_attributs"], "raison_sociale": b.name}
    elif name.startswith("etablissement"):
        siret = request.match_info["siret"]
        closed = b.sirets[siret].get("closed")
        data.update(siret=siret, siege_social=bool(b.sirets[siret].get("siege")),
                    etat_administratif="F" if closed else "A", date_fermeture=_timestamp(closed) if closed else None,
                    status_diffusion=b.diffusion, diffusable_commercialement=public)
        data["unite_legale"] = {**data["unite_legale"], "siren": b.siren, "siret_siege_social": b.head_office,
                                "rna": b.rna, "status_diffusion": b.diffusion, "diffusable_commercialement": public,
                                "personne_morale_attributs": {"raison_sociale": b.name, "sigle": None}}
    elif name == "extrait_kbis":
        data["siren"] = b.siren
        data["personne_morale"] = {**data["personne_morale"], "denomination": b.name}
    elif name == "extrait_rne":
        data["identite_entreprise"] = {**data["identite_entreprise"], "siren": b.siren, "denomination": b.name}
    elif name == "association":
        data.update(siren=b.siren, rna=b.rna, siret_siege=b.head_office, nom=b.name)
    elif name == "effectifs_annuels":
        data.update(siren=b.siren, annee=request.match_info["year"])
    elif name == "certification_qualiopi":
        data["siret"] = request.match_info["siret"]
    return data


def _render(name: str, b: Business, reference: Mapping[str, Any], request: web.Request) -> Any:
    example = copy.deepcopy(reference["data"])
    if b.verbatim:
        return example
    patch = b.answers.get(name, b.answers.get(name.removesuffix("_diffusible"), {}))
    if isinstance(example, list):  # a list endpoint: each item is itself an envelope
        return [{**item, "data": _merge(_identify(name, item["data"], b, request), patch)} for item in example]
    return _merge(_identify(name, example, b, request), patch)


# ---------------------------------------------------------------------------------------------- handlers


def _authorized(request: web.Request) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), request.app[TOKEN].encode())


def _call_context(request: web.Request) -> web.Response | None:
    """Upstream refuses a call without its context, in this order: context, object, recipient."""
    for code, param in (("00201", "context"), ("00202", "object"), ("00203", "recipient")):
        if not request.query.get(param, "").strip():
            return _unprocessable(code, f"Le paramètre {param} est obligatoire", param)
    if not valid_siret(request.query["recipient"]):
        return _unprocessable("00203", "Le paramètre recipient doit être le SIRET de l'administration destinataire",
                              "recipient")
    return None


def _find(request: web.Request, directory: Businesses) -> Business | web.Response | None:
    info = request.match_info
    if "year" in info and not _YEAR.match(info["year"]):
        return _unprocessable("00307", "L'année n'est pas correctement formatée", "year")
    if "siren" in info:
        if not valid_siren(info["siren"]):
            return _unprocessable("00301", "Le numéro de siren n'est pas correctement formatté", "siren")
        return directory.by_siren(info["siren"])
    if "siret" in info:
        if not valid_siret(info["siret"]):
            return _unprocessable("00302", "Le numéro de siret n'est pas correctement formatté", "siret")
        return directory.by_siret(info["siret"])
    value = info["siren_or_rna"]
    if valid_siren(value):
        return directory.by_siren(value)
    if _RNA.match(value):
        return directory.by_rna(value)
    return _unprocessable("00333", "Le numéro de siren ou le numéro d'association indiqué n'est pas correctement "
                          "formatté", "siren_or_rna")


def _handler(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        if not _authorized(request):
            return error(401, "00101", "Interdit", "Votre token n'est pas valide ou n'est pas renseigné",
                         parameter="token")
        refused = _call_context(request)
        if refused is not None:
            return refused
        directory = request.app[BUSINESSES]
        reference = directory.reference[ENDPOINTS[name]]
        found = _find(request, directory)
        if isinstance(found, web.Response):
            return found
        if found is not None and found.fault is not None and found.fault != "slow":
            return _fault(found.fault, reference)
        if found is None or name in found.missing:
            code, title, detail, meta = _reference_error(reference, 404, "003")
            return error(404, code, title, detail, meta=meta)
        if found.fault == "slow":
            await asyncio.sleep(request.app[SLOW_DELAY])
        if name in PUBLIC_SIRENE and found.diffusion != "diffusible":
            return error(451, "01451", "Indisponible pour des raisons légales",
                         "L'entité s'est opposée à la diffusion de ses données : elles ne sont disponibles que sur "
                         "les endpoints des données protégées.", meta={"provider": "INSEE"})
        data = _render(name, found, reference, request)
        return web.json_response({"data": data, "links": {}, "meta": {}},
                                 headers={"X-Response-Cached": "false", "RateLimit-Limit": "50"})

    return handle


def _fault(fault: str, reference: Mapping[str, Any]) -> web.Response:
    if fault == "rate_limited":
        return error(429, "00429", "Trop de requêtes", "Vous avez effectué trop de requêtes",
                     headers={"Retry-After": str(RATE_LIMIT_RETRY_AFTER), "RateLimit-Limit": "50",
                              "RateLimit-Remaining": "0"})
    status, suffix = {"upstream_timeout": (504, "002"), "unavailable": (504, "001"),
                      "provider_error": (502, "999")}[fault]
    code, title, detail, meta = _reference_error(reference, status, suffix)
    return error(status, code, title, detail, meta=meta)


def create_app(token: str, *, slow_delay: float = DEFAULT_SLOW_DELAY,
               directory: Businesses | None = None) -> web.Application:
    """The API Entreprise sandbox. `token` is the only bearer accepted; `slow_delay` is the slow business's delay."""
    if not token:
        raise ValueError("the sandbox needs a non-empty token")
    app = web.Application()
    app[TOKEN] = token
    app[BUSINESSES] = directory if directory is not None else businesses()
    app[SLOW_DELAY] = float(slow_delay)
    for name, path in ENDPOINTS.items():
        app.router.add_get(path, _handler(name))
    return app


async def start_sandbox(token: str, *, host: str = "127.0.0.1", port: int = 0,
                        slow_delay: float = DEFAULT_SLOW_DELAY) -> tuple[web.AppRunner, str]:
    """Serve the sandbox on host:port (0: a free port). Returns the runner (await `runner.cleanup()`) and base URL."""
    return await serve(create_app(token, slow_delay=slow_delay), host=host, port=port)
