"""A sandbox speaking API Particulier v3 (https://particulier.api.gouv.fr), on the synthetic citizens.

It answers the real paths with the real query parameters, the real bearer-token check and the real error shape
(`{"errors": [{"code", "title", "detail", "source", "meta"}]}`, codes taken from the published OpenAPI), so the
production adapter is tested against it unchanged. Deliberate differences from upstream, all documented:

* identity ambiguity always answers 422 with code 00391 (upstream documents that code for service civique;
  the DSS and MESR endpoints do not say how they report it);
* a fault citizen answers 503 (``unavailable``), which upstream itself reports as 504/xx001;
* only `codeCogInseeCommuneNaissance` designates the birth commune; the `nomCommuneNaissance` triplet is
  refused with 422/00366 rather than resolved;
* the quotient familial has one month per household; `annee`/`mois` for another month answer 404;
* `recipient` is required but its SIRET is not checked against any directory;
* scolarités (MEN) matches a pupil by the school year's first year and one perimeter (the school's UAI, or the
  département or academic region stored beside the record); `degreEtablissement` 1D finds no collège or lycée pupil;
* the `/france_connect` endpoints check the bearer as upstream does, by asking FranceConnect whom it names: the
  sandbox calls the userinfo endpoint it is given (`france_connect_userinfo`, the FranceConnect sandbox's), and
  answers about the citizen whose pivot identity that is; without one configured they answer 401.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiohttp
from aiohttp import web

from adapters.identity import FRANCE, PivotIdentity, SubjectError
from adapters.sandbox import DEFAULT_SLOW_DELAY, Citizen, CivilQuery, Directory, directory, serve

TOKEN = web.AppKey("token", str)


@dataclass(slots=True)
class FranceConnectCheck:
    """Where the `/france_connect` endpoints check their bearer: FranceConnect's userinfo URL (None: nowhere, 401).
    Mutable, so that it can be set once the FranceConnect sandbox listens, after this app started."""

    userinfo: str | None = None


FC_CHECK = web.AppKey("france_connect_check", FranceConnectCheck)
DIRECTORY = web.AppKey("directory", Directory)
SLOW_DELAY = web.AppKey("slow_delay", float)

Render = Callable[[Citizen, Directory, web.Request], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class CivilRules:
    """What an `/identite` endpoint requires, per the published OpenAPI."""

    max_first_names: int
    full_date: bool
    sex_required: bool
    # DSS endpoints take (and require) the birth country, and take `nomUsage`; MESR and Cnous take neither.
    country: bool
    # GIP-MDS (service civique) reads names and the full birth date only, MEN (scolarités) also the sex
    sex: bool = True
    birthplace: bool = True


DSS = CivilRules(max_first_names=3, full_date=False, sex_required=True, country=True)
MESRI = CivilRules(max_first_names=1, full_date=True, sex_required=True, country=False)
CNOUS = CivilRules(max_first_names=3, full_date=True, sex_required=False, country=False)
DSNJ = CivilRules(max_first_names=3, full_date=True, sex_required=True, country=True)
GIP_MDS = CivilRules(max_first_names=3, full_date=True, sex_required=False, country=False, sex=False,
                     birthplace=False)
MEN = CivilRules(max_first_names=3, full_date=True, sex_required=True, country=False, birthplace=False)


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    lookup: Literal["identite", "ine", "identifiant", "france_connect"]
    provider: str
    # Upstream error codes are <provider prefix><3 digits>: 001 unavailable, 002 timed out, 003 not found.
    prefix: str
    not_found_title: str
    not_found_detail: str
    render: Render
    civil: CivilRules | None = None
    # whose identifier an `identifiant` lookup takes
    scheme: Literal["france_travail", "sdh"] = "france_travail"
    # the endpoint's own parameters, checked before the lookup: the 422 to answer, or None
    check: Callable[[web.Request], web.Response | None] | None = None


# ---------------------------------------------------------------------------------------------- records


def _upper_first_name(c: Citizen) -> str:
    return c.pivot.given_names[0].upper()


def _quotient_familial(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    if c.household is None:
        return None
    data = dict(d.households[c.household])
    qf = data["quotient_familial"]
    for param in ("annee", "mois"):
        asked = request.query.get(param)
        if asked is not None and asked != str(qf[param]):
            return None
    return data


def _participation_familiale_eaje(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    rec = c.records.get("participation_familiale_eaje")
    if c.household is None or rec is None:
        return None
    household = d.households[c.household]
    asked = (c.pivot.family_name.upper(), " ".join(c.pivot.given_names).upper())
    # upstream gives the birth commune of the claimant asked about only, null for the others
    commune = c.pivot.birthplace if c.pivot.birthcountry == FRANCE else None

    def person(p: Mapping[str, Any], main: bool) -> dict[str, Any]:
        known = main and (p["nom_naissance"], p["prenoms"]) == asked
        return {**p, "code_cog_insee_commune_naissance": commune if known else None}

    return {"allocataires": [person(p, True) for p in household["allocataires"]],
            "enfants": [person(p, False) for p in household["enfants"]],
            "adresse": household["adresse"], "parametres_calcul_participation_familiale": rec}


def _statut_etudiant(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    rec = c.records.get("statut_etudiant")
    if rec is None:
        return None
    return {
        "admissions": rec["admissions"],
        "identite": {"nom_naissance": c.pivot.family_name.upper(), "prenom": _upper_first_name(c),
                     "date_naissance": c.pivot.birthdate},
    }


def _etudiant_boursier(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    rec = c.records.get("etudiant_boursier")
    if rec is None:
        return None
    return {
        **rec,
        "identite": {"nom": c.pivot.family_name.upper(), "prenoms": [n.upper() for n in c.pivot.given_names],
                     "date_naissance": c.pivot.birthdate, "nom_commune_naissance": c.birthplace_label,
                     "sexe": c.sex},
    }


def _etudiant_boursier_v4(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    v3 = _etudiant_boursier(c, d, request)
    if v3 is None:
        return None
    boursier = v3.pop("est_boursier")
    radiation = c.records["etudiant_boursier"].get("date_radiation")
    return {"statut_boursier": {"est_boursier": boursier, "est_radie": radiation is not None,
                                "date_radiation": radiation}, **v3}


def _without_identity(render: Render) -> Render:
    def without(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
        data = render(c, d, request)
        return None if data is None else {k: v for k, v in data.items() if k != "identite"}

    return without


def _france_travail(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    rec = c.records.get("france_travail_record")
    if rec is None or c.france_travail is None:
        return None
    return {
        "identifiant": c.france_travail,
        "identite": {"civilite": "M." if c.sex == "M" else "MME", "nom_naissance": c.pivot.family_name.upper(),
                     "nom_usage": c.pivot.preferred_name.upper() or None, "prenom": _upper_first_name(c),
                     "sexe": "Masculin" if c.sex == "M" else "Féminin", "date_naissance": c.pivot.birthdate},
        **rec,
    }


def _france_travail_indemnites(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    payments = c.records.get("france_travail_indemnites")
    if not payments or c.france_travail is None:
        return None  # upstream lists at least one payment, else answers 404
    return {"identifiant": c.france_travail, "paiements": payments}


_SCHOOL_YEAR = re.compile(r"^([0-9]{4})(-([0-9]{4}))?$")
_PERIMETERS = ("codeEtablissement", "codesBcnDepartements[]", "codesBcnRegions[]")


def _values(request: web.Request, name: str) -> list[str]:
    return [v for v in request.query.getall(name, []) if v]


def _scolarites_query(request: web.Request) -> web.Response | None:
    """MEN requires the school year and exactly one perimeter: the school, départements or academic regions."""
    q = request.query
    year = _SCHOOL_YEAR.match(q.get("anneeScolaire", ""))
    if year is None or (year[3] is not None and int(year[3]) != int(year[1]) + 1):
        return _unprocessable("Le paramètre anneeScolaire n'est pas correctement formaté")
    if q.get("degreEtablissement") not in (None, "1D", "2D"):
        return _unprocessable("Le paramètre degreEtablissement n'est pas correctement formaté")
    if q.get("codeEtablissement") and (_values(request, "codesBcnDepartements[]")
                                       or _values(request, "codesBcnRegions[]")):
        return _unprocessable("Les paramètres codeEtablissement et périmètre (codesBcnRegions/codesBcnDepartements) "
                              "sont mutuellement exclusifs", code="00419")
    if sum(1 for name in _PERIMETERS if _values(request, name)) != 1:
        return _unprocessable("Exactement un type de périmètre doit être fourni")
    return None


def _immatriculation_query(request: web.Request) -> web.Response | None:
    if not request.query.get("immatriculation", "").strip():
        return _unprocessable("Le paramètre immatriculation est obligatoire")
    return None


def _scolarites(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    rec = c.records.get("scolarites")
    if rec is None:
        return None
    q = request.query
    data = {k: v for k, v in rec.items() if k != "perimetre"}
    perimeter = rec["perimetre"]
    first_year = data["annee_scolaire"].split("-")[0]
    in_perimeter = (q.get("codeEtablissement") == data["etablissement"]["code_uai"]
                    or perimeter["departement"] in _values(request, "codesBcnDepartements[]")
                    or perimeter["region_academique"] in _values(request, "codesBcnRegions[]"))
    # a pupil in a collège or lycée is in the second degree
    degree_ok = q.get("degreEtablissement") in (None, "2D")
    if q.get("anneeScolaire", "").split("-")[0] != first_year or not in_perimeter or not degree_ok:
        return None
    return data


def _extrait_immatriculation(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
    """The vehicle whose registration number is asked, if it is attached to the FranceConnect user."""
    vehicle: dict[str, Any] | None = c.records.get("extrait_immatriculation_vehicule", {}).get(
        request.query.get("immatriculation", ""))
    return vehicle


def _record(name: str) -> Render:
    def render(c: Citizen, d: Directory, request: web.Request) -> dict[str, Any] | None:
        rec = c.records.get(name)
        return dict(rec) if rec is not None else None

    return render


# The endpoint families whose `/identite` endpoints have a `/france_connect` sibling answering the same data.
FRANCE_CONNECT_FAMILIES = ("/v3/dss/", "/v3/dsnj/", "/v3/mesri/", "/v3/gip_mds/", "/v3/cnous/", "/v4/cnous/")
# ... of which these answer without the person's `identite` (FranceConnect already knows who it is)
_WITHOUT_IDENTITY = ("/v3/mesri/", "/v3/cnous/", "/v4/cnous/")
# GIP-MDS, SDH and ANTS say "not found" in these words
_NOT_KNOWN = ("Entité non trouvée", "Le ou les paramètre(s) d'entrée n'existent pas, ne sont pas connus, ou ne "
              "comportent aucune information pour cet appel. Veuillez vérifier que votre recherche est couverte par "
              "le périmètre de l'API.")
_DSS_NOT_FOUND = ("35", "Allocataire non référencé", "L'allocataire n'est pas référencé auprès des caisses éligibles")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v3/dss/quotient_familial/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_quotient_familial, civil=DSS),
    Endpoint("/v3/dss/complementaire_sante_solidaire/identite", "identite", "RNCPS", "40",
             "Dossier allocataire absent RNCPS", "Le dossier allocataire n'a pas été trouvé auprès du RNCPS.",
             render=_record("complementaire_sante_solidaire"), civil=DSS),
    Endpoint("/v3/dss/revenu_solidarite_active/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_record("revenu_solidarite_active"), civil=DSS),
    Endpoint("/v3/dss/prime_activite/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_record("prime_activite"), civil=DSS),
    Endpoint("/v3/dss/allocation_adulte_handicape/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_record("allocation_adulte_handicape"), civil=DSS),
    Endpoint("/v3/dss/allocation_enfant_handicape/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_record("allocation_enfant_handicape"), civil=DSS),
    Endpoint("/v3/dss/allocation_soutien_familial/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_record("allocation_soutien_familial"), civil=DSS),
    Endpoint("/v3/dss/participation_familiale_eaje/identite", "identite", "CNAF & MSA", *_DSS_NOT_FOUND,
             render=_participation_familiale_eaje, civil=DSS),
    Endpoint("/v3/gip_mds/service_civique/identite", "identite", "GIP-MDS", "31", *_NOT_KNOWN,
             render=_record("service_civique"), civil=GIP_MDS),
    *(Endpoint(f"/{v}/men/scolarites/identite", "identite", "MEN", "30", "Entité non trouvée",
               "Aucun eleve n'a pu etre trouve avec les criteres de recherche fournis",
               render=_scolarites, civil=MEN, check=_scolarites_query) for v in ("v3", "v4")),
    Endpoint("/v3/dsnj/service_national/identite", "identite", "DSNJ", "39", "Entité non trouvée",
             "Le ou les paramètre(s) d'entrée n'existent pas, ne sont pas connus, ou ne comportent aucun résultat.",
             render=_record("service_national"), civil=DSNJ),
    Endpoint("/v3/mesri/statut_etudiant/identite", "identite", "MESRI", "25", "Entité non trouvée",
             "Aucun étudiant n'a pu être trouvé avec les critères de recherche fournis.",
             render=_statut_etudiant, civil=MESRI),
    Endpoint("/v3/mesri/statut_etudiant/ine", "ine", "MESRI", "25", "Entité non trouvée",
             "Aucun étudiant n'a pu être trouvé avec les critères de recherche fournis.",
             render=_statut_etudiant),
    Endpoint("/v3/cnous/etudiant_boursier/identite", "identite", "CNOUS", "26", "Entité non trouvée",
             "Aucun étudiant boursier n'a pu être trouvé avec les critères de recherche fournis.",
             render=_etudiant_boursier, civil=CNOUS),
    Endpoint("/v3/cnous/etudiant_boursier/ine", "ine", "CNOUS", "26", "Entité non trouvée",
             "Aucun étudiant boursier n'a pu être trouvé avec les critères de recherche fournis. Veuillez "
             "vérifier que l'identifiant correspond au périmètre couvert par l'API.",
             render=_etudiant_boursier),
    Endpoint("/v4/cnous/etudiant_boursier/identite", "identite", "CNOUS", "26", "Entité non trouvée",
             "Aucun étudiant boursier n'a pu être trouvé avec les critères de recherche fournis.",
             render=_etudiant_boursier_v4, civil=CNOUS),
    Endpoint("/v4/cnous/etudiant_boursier/ine", "ine", "CNOUS", "26", "Entité non trouvée",
             "Aucun étudiant boursier n'a pu être trouvé avec les critères de recherche fournis.",
             render=_etudiant_boursier_v4),
    Endpoint("/v3/sdh/statut_sportif/identifiant", "identifiant", "SDH", "41", *_NOT_KNOWN,
             render=_record("statut_sportif"), scheme="sdh"),
    Endpoint("/v3/france_travail/indemnites/identifiant", "identifiant", "France Travail", "24",
             "Entité non trouvée",
             "Aucune situation France Travail n'a pu être trouvée avec les critères de recherche fournis.",
             render=_france_travail_indemnites),
    Endpoint("/v3/ants/extrait_immatriculation_vehicule/france_connect", "france_connect", "ANTS", "42",
             *_NOT_KNOWN, render=_extrait_immatriculation, check=_immatriculation_query),
    Endpoint("/v3/france_travail/statut/identifiant", "identifiant", "France Travail", "24", "Entité non trouvée",
             "Aucune situation France Travail n'a pu être trouvée avec les critères de recherche fournis.",
             render=_france_travail),
)

# ---------------------------------------------------------------------------------------------- errors


def error(status: int, code: str, title: str, detail: str, *, parameter: str | None = None,
          meta: Mapping[str, Any] | None = None) -> web.Response:
    body = {"errors": [{"code": code, "title": title, "detail": detail,
                        "source": {"parameter": parameter} if parameter else None, "meta": dict(meta or {})}]}
    return web.json_response(body, status=status)


def _unauthorized() -> web.Response:
    return error(401, "00101", "Interdit", "Votre token n'est pas valide ou n'est pas renseigné",
                 parameter="token")


def _unprocessable(detail: str = "Un ou plusieurs paramètres de civilité ne sont pas correctement formatés",
                   code: str = "00366") -> web.Response:
    return error(422, code, "Entité non traitable", detail)


def _ambiguous() -> web.Response:
    return _unprocessable("Les paramètres d'identité correspondent à plusieurs personnes. Nous ne pouvons pas "
                          "fournir les informations pour cet individu.", code="00391")


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


# ---------------------------------------------------------------------------------------------- parameters

_COMMUNE = re.compile(r"^[0-9][0-9AB][0-9]{3}$")
_COUNTRY = re.compile(r"^99[0-9]{3}$")
_INE = re.compile(r"^[0-9a-zA-Z]{11}$")


def _int(request: web.Request, name: str, low: int, high: int) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _Refused(_unprocessable(f"Le paramètre {name} n'est pas correctement formaté"))
    return int(raw)


def civil_query(request: web.Request, rules: CivilRules) -> CivilQuery:
    """The identity in the query string, checked as upstream checks it; raises `_Refused` with the 422."""
    q = request.query
    birth_name = q.get("nomNaissance", "").strip()
    first_names = [n for n in q.getall("prenoms[]", []) if n.strip()]
    if not birth_name or not first_names or len(first_names) > rules.max_first_names:
        raise _Refused(_unprocessable())
    year = _int(request, "anneeDateNaissance", 1800, 2999)
    month = _int(request, "moisDateNaissance", 1, 12)
    day = _int(request, "jourDateNaissance", 1, 31)
    if rules.full_date and None in (year, month, day):
        raise _Refused(_unprocessable())
    # what the endpoint does not take, it does not read
    sex = (q.get("sexeEtatCivil") or None) if rules.sex else None
    if sex not in (None, "M", "F") or (rules.sex_required and sex is None):
        raise _Refused(_unprocessable())
    if not rules.birthplace:
        return CivilQuery(birth_name=birth_name, first_names=first_names, year=year, month=month, day=day, sex=sex)
    commune = q.get("codeCogInseeCommuneNaissance") or None
    if commune is not None and not _COMMUNE.match(commune):
        raise _Refused(_unprocessable())
    if q.get("nomCommuneNaissance"):
        raise _Refused(_unprocessable("Le bac à sable DLNUF ne gère que codeCogInseeCommuneNaissance"))
    country: str | None = None
    if not rules.country and commune is not None and commune.startswith("99"):
        # MESRI and Cnous take the birth country's code (99xxx) in the commune parameter for people born abroad
        country, commune = commune, None
    elif rules.country:
        country = q.get("codeCogInseePaysNaissance") or None
        if country is None or not _COUNTRY.match(country):
            raise _Refused(_unprocessable())
        # Born in France needs the commune; born abroad must not send one.
        if (country == "99100") != (commune is not None):
            raise _Refused(_unprocessable())
    return CivilQuery(birth_name=birth_name, first_names=first_names, year=year, month=month, day=day, sex=sex,
                      birth_commune=commune, birth_country=country)


# ---------------------------------------------------------------------------------------------- handlers


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), request.app[TOKEN].encode())


def _find(ep: Endpoint, request: web.Request, d: Directory) -> Citizen | None:
    if ep.lookup == "ine":
        ine = request.query.get("ine", "")
        if not _INE.match(ine):
            raise _Refused(_unprocessable("Le numéro d'INE n'est pas correctement formatté", code="00360"))
        return d.by_ine(ine)
    if ep.lookup == "identifiant":
        identifiant = request.query.get("identifiant", "").strip()
        if not identifiant:
            raise _Refused(_unprocessable("L'identifiant est manquant", code="00380"))
        return d.by_sdh(identifiant) if ep.scheme == "sdh" else d.by_france_travail(identifiant)
    assert ep.civil is not None
    found = d.match(civil_query(request, ep.civil))
    if len(found) > 1:
        raise _Refused(_ambiguous())
    return found[0] if found else None


async def _france_connect_citizen(request: web.Request, d: Directory) -> Citizen | None:
    """The citizen the FranceConnect access token names, asked of FranceConnect's userinfo as upstream asks it;
    raises `_Refused` (401) for a token FranceConnect does not know (expired after its 60 seconds, or forged)."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    userinfo_url = request.app[FC_CHECK].userinfo
    if scheme.lower() != "bearer" or not presented.strip() or not userinfo_url:
        raise _Refused(_unauthorized())
    async with aiohttp.ClientSession() as session, session.get(
            userinfo_url, headers={"Authorization": f"Bearer {presented.strip()}"}) as answer:
        if answer.status != 200:
            raise _Refused(error(401, "00103", "Jeton expiré", "Votre token est expiré. Vous devez refaire une "
                                 "demande", parameter="token"))
        text = await answer.text()
        if answer.content_type == "application/jwt":
            # FranceConnect v2 signs userinfo; fetched straight from FranceConnect, its payload is what it says
            payload = text.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        else:
            claims = json.loads(text)
    try:
        identity = PivotIdentity.from_json({k: claims.get(k, "") for k in (
            "family_name", "given_name", "birthdate", "gender", "birthplace", "birthcountry")})
    except SubjectError:
        raise _Refused(error(403, "00100", "Privilèges insuffisants", "Le jeton FranceConnect ne porte pas "
                             "l'identité pivot", parameter="token")) from None
    return next((c for c in d.citizens if c.pivot.normalised() == identity.normalised()), None)


def _handler(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        if ep.lookup != "france_connect" and not _authorized(request):
            return _unauthorized()
        if not request.query.get("recipient"):
            return error(422, "00203", "Entité non traitable", "Le paramètre recipient est obligatoire",
                         parameter="recipient")
        if ep.check is not None and (refusal := ep.check(request)) is not None:
            return refusal
        d = request.app[DIRECTORY]
        try:
            if ep.lookup == "france_connect":
                citizen = await _france_connect_citizen(request, d)
            else:
                citizen = _find(ep, request, d)
        except _Refused as refused:
            return refused.response
        meta = {"provider": ep.provider}
        if citizen is not None and citizen.fault == "unavailable":
            return error(503, ep.prefix + "001", "Service non disponible",
                         "Service du fournisseur de données temporairement indisponible ou en maintenance.",
                         meta=meta)
        if citizen is not None and citizen.fault == "upstream_timeout":
            return error(504, ep.prefix + "002", "Intermédiaire hors-délai",
                         "Temps d’attente d’une réponse du fournisseur de données écoulé.", meta=meta)
        if citizen is not None and citizen.fault == "not_json":
            return web.Response(status=200, content_type="text/html",
                                text="<!DOCTYPE html><html><body><h1>Maintenance en cours</h1></body></html>")
        if citizen is not None and citizen.fault == "slow":
            await asyncio.sleep(request.app[SLOW_DELAY])
        data = ep.render(citizen, d, request) if citizen is not None else None
        if data is None:
            return error(404, ep.prefix + "003", ep.not_found_title, ep.not_found_detail, meta=meta)
        return web.json_response({"data": data, "links": {}, "meta": {}}, headers={"X-Response-Cached": "false"})

    return handle


def create_app(token: str, *, slow_delay: float = DEFAULT_SLOW_DELAY, citizens: Directory | None = None,
               france_connect_userinfo: str | None = None) -> web.Application:
    """The API Particulier sandbox. `token` is the only bearer accepted; `slow_delay` is the slow citizen's delay;
    `france_connect_userinfo` the FranceConnect userinfo URL that checks the `/france_connect` endpoints' bearer
    (may be set later in `app[FC_CHECK]`, once the FranceConnect sandbox listens)."""
    if not token:
        raise ValueError("the sandbox needs a non-empty token")
    app = web.Application()
    app[TOKEN] = token
    app[DIRECTORY] = citizens if citizens is not None else directory()
    app[SLOW_DELAY] = float(slow_delay)
    app[FC_CHECK] = FranceConnectCheck(france_connect_userinfo)
    for ep in ENDPOINTS:
        app.router.add_get(ep.path, _handler(ep))
        if ep.lookup == "identite" and ep.path.startswith(FRANCE_CONNECT_FAMILIES):
            render = _without_identity(ep.render) if ep.path.startswith(_WITHOUT_IDENTITY) else ep.render
            fc = replace(ep, path=ep.path.removesuffix("/identite") + "/france_connect", lookup="france_connect",
                         civil=None, render=render)
            app.router.add_get(fc.path, _handler(fc))
    return app


async def start_sandbox(token: str, *, host: str = "127.0.0.1", port: int = 0,
                        slow_delay: float = DEFAULT_SLOW_DELAY) -> tuple[web.AppRunner, str]:
    """Serve the sandbox on host:port (0: a free port). Returns the runner (await `runner.cleanup()`) and base URL."""
    return await serve(create_app(token, slow_delay=slow_delay), host=host, port=port)
