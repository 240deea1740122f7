"""Adapter for API Particulier v3 (https://particulier.api.gouv.fr), the State's gateway to CAF/MSA, MESR, Cnous,
France Travail, RNCPS, DSNJ, GIP-MDS, SDH, MEN and ANTS data.

Invariants:

* the request carries the bearer token, the consumer's SIRET as `recipient`, and only the identity parameters
  the endpoint's published OpenAPI lists; an unknown birth day or month is omitted, never guessed; in
  FranceConnect mode the bearer is the citizen's FranceConnect access token and no identity is sent;
* the answer's `data` is projected onto the dataset schema (fields upstream adds later are not released) and
  otherwise passed through unchanged, so a wrong type is caught by the broker's schema validation;
* error messages name the endpoint and the upstream error code, never the query string: it holds the
  person's identity, and these messages go to server logs.

Upstream errors (`{"errors": [{"code", "title", "detail", ...}]}`) map to `AdapterError` leaves:

=====================================  =========================================================
upstream                               adapter error
=====================================  =========================================================
404 in the error shape                 SubjectNotFound
404 not in it (a wrong base_url)       ProviderMisconfigured
422 code 00391 (several people match)  IdentityAmbiguous
400, other 422                         ProviderRejectedQuery (bad or insufficient parameters)
429 (too many calls)                   ProviderRateLimited, with the upstream's Retry-After
504 code xx001 (provider down)         ProviderUnavailable
504 code xx008 (provider's own limit)  ProviderRateLimited, no delay known
other 504 (xx002 the provider timed    ProviderTimeout
out, 00501 or none: the gateway)
401, 403, 409 (same request already    ProviderUnavailable
in flight, code 00015), other 5xx
200 that is not a JSON `{"data": {}}`  ProviderAnswerMalformed
=====================================  =========================================================

Upstream's 409 is not an identity conflict: it means an identical request with the same token is still being
processed, a transient condition, hence `ProviderUnavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

import schemas
from adapters.base import (
    AdapterQuery,
    IdentityAmbiguous,
    ProviderAdapter,
    ProviderAnswerMalformed,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotFound,
    parse_retry_after,
    read_body,
)
from adapters.identity import FRANCE, PivotIdentity, normalise_name
from adapters.subjects import FranceConnectSubject, ProviderIdentifier


@dataclass(frozen=True, slots=True)
class CivilStyle:
    """How an `/identite` endpoint takes the civil status, from the published OpenAPI."""

    max_first_names: int
    # MESR and Cnous mark year, month and day as required: a partial birth date cannot be sent.
    full_date: bool
    # DSS endpoints take the birth country and the usage name; MESR and Cnous take neither; DSNJ the country only.
    country_and_usage_name: bool
    usage_name: bool = True
    # GIP-MDS (service civique) takes names and the full birth date only: no sex, no birthplace; MEN (scolarités)
    # takes the sex but no birthplace.
    sex: bool = True
    birthplace: bool = True


DSS = CivilStyle(max_first_names=3, full_date=False, country_and_usage_name=True)
MESRI = CivilStyle(max_first_names=1, full_date=True, country_and_usage_name=False)
CNOUS = CivilStyle(max_first_names=3, full_date=True, country_and_usage_name=False)
DSNJ = CivilStyle(max_first_names=3, full_date=True, country_and_usage_name=True, usage_name=False)
GIP_MDS = CivilStyle(max_first_names=3, full_date=True, country_and_usage_name=False, sex=False, birthplace=False)
MEN = CivilStyle(max_first_names=3, full_date=True, country_and_usage_name=False, birthplace=False)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a dataset lives: an `/identite` path for pivot identities, and paths per identifier scheme."""

    identity_path: str | None
    style: CivilStyle | None
    # identifier scheme -> (path, query parameter)
    identifiers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # dataset parameter (the schema's x-parameters) -> upstream query parameter
    parameters: Mapping[str, str] = field(default_factory=dict)
    # FranceConnect mode, at the `/france_connect` sibling of the `/identite` path: the citizen's FranceConnect
    # access token as the bearer, no identity in the query
    france_connect: bool = False
    # an endpoint that exists only in FranceConnect mode (ANTS), at its own path
    france_connect_only: str | None = None

    @property
    def france_connect_path(self) -> str | None:
        if self.france_connect_only is not None:
            return self.france_connect_only
        if not self.france_connect or self.identity_path is None:
            return None
        return self.identity_path.removesuffix("/identite") + "/france_connect"


ROUTES: Mapping[str, Route] = {
    "quotient_familial": Route("/v3/dss/quotient_familial/identite", DSS,
                               parameters={"annee": "annee", "mois": "mois"}, france_connect=True),
    "complementaire_sante_solidaire": Route("/v3/dss/complementaire_sante_solidaire/identite", DSS,
                                            france_connect=True),
    "revenu_solidarite_active": Route("/v3/dss/revenu_solidarite_active/identite", DSS, france_connect=True),
    "allocation_adulte_handicape": Route("/v3/dss/allocation_adulte_handicape/identite", DSS, france_connect=True),
    "allocation_enfant_handicape": Route("/v3/dss/allocation_enfant_handicape/identite", DSS, france_connect=True),
    "allocation_soutien_familial": Route("/v3/dss/allocation_soutien_familial/identite", DSS, france_connect=True),
    "participation_familiale_eaje": Route("/v3/dss/participation_familiale_eaje/identite", DSS,
                                          france_connect=True),
    # MEN's v3 and v4 paths answer the same shape; v4 is the current one
    "scolarites": Route("/v4/men/scolarites/identite", MEN,
                        parameters={"annee_scolaire": "anneeScolaire", "code_etablissement": "codeEtablissement",
                                    "degre_etablissement": "degreEtablissement",
                                    "code_bcn_departement": "codesBcnDepartements[]",
                                    "code_bcn_region": "codesBcnRegions[]"}),
    "service_civique": Route("/v3/gip_mds/service_civique/identite", GIP_MDS, france_connect=True),
    "service_national": Route("/v3/dsnj/service_national/identite", DSNJ, france_connect=True),
    "prime_activite": Route("/v3/dss/prime_activite/identite", DSS, france_connect=True),
    "statut_etudiant": Route("/v3/mesri/statut_etudiant/identite", MESRI,
                             {"ine": ("/v3/mesri/statut_etudiant/ine", "ine")}),
    "etudiant_boursier": Route("/v3/cnous/etudiant_boursier/identite", CNOUS,
                               {"ine": ("/v3/cnous/etudiant_boursier/ine", "ine")}),
    "indemnites_france_travail": Route(None, None,
                                       {"france_travail": ("/v3/france_travail/indemnites/identifiant",
                                                           "identifiant")}),
    # ANTS answers only about the FranceConnect user, for a registration number attached to them
    "extrait_immatriculation_vehicule": Route(
        None, None, parameters={"immatriculation": "immatriculation"},
        france_connect_only="/v3/ants/extrait_immatriculation_vehicule/france_connect"),
    "statut_sportif": Route(None, None, {"sdh": ("/v3/sdh/statut_sportif/identifiant", "identifiant")}),
    "statut_demandeur_emploi": Route(None, None,
                                     {"france_travail": ("/v3/france_travail/statut/identifiant",
                                                         "identifiant")}),
}
# Where upstream moved an answer to a new shape under a new path, that shape is a new dataset version, served beside
# the old one (the routes above are every dataset's version 1).
VERSIONED_ROUTES: Mapping[tuple[str, int], Route] = {
    # MESRI's FranceConnect mode answers without `identite`: v2 is the shape without it, for every mode
    ("statut_etudiant", 2): Route("/v3/mesri/statut_etudiant/identite", MESRI,
                                  {"ine": ("/v3/mesri/statut_etudiant/ine", "ine")}, france_connect=True),
    # Cnous v4: `est_boursier` became `statut_boursier` {est_boursier, est_radie, date_radiation}
    ("etudiant_boursier", 2): Route("/v4/cnous/etudiant_boursier/identite", CNOUS,
                                    {"ine": ("/v4/cnous/etudiant_boursier/ine", "ine")}),
    # Cnous v4's FranceConnect mode answers without `identite`: v3 is v2's shape without it, for every mode
    ("etudiant_boursier", 3): Route("/v4/cnous/etudiant_boursier/identite", CNOUS,
                                    {"ine": ("/v4/cnous/etudiant_boursier/ine", "ine")}, france_connect=True),
}
SUPPORTED_DATASETS = frozenset(ROUTES)


def route_for(dataset: str, version: int) -> Route | None:
    """The route of a dataset version; None when API Particulier does not serve that version."""
    if (dataset, version) in VERSIONED_ROUTES:
        return VERSIONED_ROUTES[dataset, version]
    return ROUTES.get(dataset) if version == 1 else None


def civil_status_params(pivot: PivotIdentity, style: CivilStyle) -> list[tuple[str, str]]:
    """The query parameters for a pivot identity, in API Particulier's names.

    FranceConnect's space-separated `given_name` becomes repeated `prenoms[]` (a compound first name keeps its
    hyphen); a 00 day or month is left out; the birth commune is sent for people born in France, and, where the
    endpoint takes no birth country (MESRI, Cnous), the country's 99xxx code in its place for people born abroad.
    Raises `ProviderRejectedQuery` when the endpoint needs what the identity lacks (a full birth date).
    """
    year, month, day = pivot.birthdate.split("-")
    if style.full_date and (month == "00" or day == "00"):
        raise ProviderRejectedQuery("this endpoint requires a full birth date; the identity's day or month is "
                                    "unknown")
    params = [("nomNaissance", pivot.family_name)]
    if (style.country_and_usage_name and style.usage_name and pivot.preferred_name
            and normalise_name(pivot.preferred_name) != normalise_name(pivot.family_name)):
        # Upstream: "le nom d'usage n'est jamais identique au nom de famille".
        params.append(("nomUsage", pivot.preferred_name))
    params += [("prenoms[]", name) for name in pivot.given_names[: style.max_first_names]]
    params.append(("anneeDateNaissance", str(int(year))))
    if month != "00":
        params.append(("moisDateNaissance", str(int(month))))
        if day != "00":
            params.append(("jourDateNaissance", str(int(day))))
    if style.sex:
        params.append(("sexeEtatCivil", "M" if pivot.gender == "male" else "F"))
    if not style.birthplace:
        return params
    if style.country_and_usage_name:
        params.append(("codeCogInseePaysNaissance", pivot.birthcountry))
        if pivot.birthcountry == FRANCE:
            params.append(("codeCogInseeCommuneNaissance", pivot.birthplace))
    else:
        # MESRI and Cnous take no birth country: for someone born abroad they expect the country's COG code
        # (99xxx) in the commune parameter, and without it match nobody.
        params.append(("codeCogInseeCommuneNaissance",
                       pivot.birthplace if pivot.birthcountry == FRANCE else pivot.birthcountry))
    return params


def request_for(query: AdapterQuery) -> tuple[str, list[tuple[str, str]]]:
    """Path and query parameters for `query`; raises `ProviderRejectedQuery` when it cannot be expressed."""
    route = route_for(query.dataset, query.version)
    if route is None:
        raise ProviderRejectedQuery(f"API Particulier does not serve dataset {query.dataset!r} v{query.version}")
    if not query.recipient:
        raise ProviderRejectedQuery("API Particulier requires the recipient's SIRET on every call")
    # the dataset parameters the broker checked against the schema; the upstream defaults apply to the others
    recipient = [("recipient", query.recipient)] + [
        (upstream, str(query.parameters[name])) for name, upstream in route.parameters.items()
        if name in query.parameters]
    subject = query.subject
    if isinstance(subject, FranceConnectSubject):
        if route.france_connect_path is None:
            raise ProviderRejectedQuery(f"{query.dataset} has no FranceConnect mode here")
        return route.france_connect_path, recipient
    if isinstance(subject, PivotIdentity):
        if route.identity_path is None or route.style is None:
            ways = ", ".join(sorted(route.identifiers)) or "none: only through FranceConnect"
            raise ProviderRejectedQuery(f"{query.dataset} cannot be looked up by pivot identity, only by "
                                        f"identifier ({ways})")
        return route.identity_path, recipient + civil_status_params(subject, route.style)
    target = route.identifiers.get(subject.kind) if isinstance(subject, ProviderIdentifier) else None
    if target is None or not isinstance(subject, ProviderIdentifier):
        raise ProviderRejectedQuery(f"{query.dataset} cannot be looked up by {subject.kind!r}")
    path, param = target
    return path, [*recipient, (param, subject.value)]


def to_dataset(dataset: str, version: int, answer: Any) -> dict[str, Any]:
    """The dataset document for an upstream 200 body: its `data`, keeping only what the schema declares."""
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
        raise ProviderAnswerMalformed("answer is not a JSON object with a 'data' object")
    document: dict[str, Any] = schemas.project(answer["data"], schemas.load(dataset, version))
    return document


def _first_error(body: bytes) -> tuple[str, str]:
    """Code and title of the first upstream error, or empty strings when the body is not the error shape."""
    try:
        parsed = json.loads(body)
        first = parsed["errors"][0]
        return str(first.get("code", "")), str(first.get("title", ""))
    except (ValueError, LookupError, TypeError, AttributeError):
        return "", ""


def _is_error_shape(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("errors"), list)


def raise_for_status(endpoint: str, status: int, body: bytes, *, retry_after: str | None = None) -> None:
    """Map a non-200 upstream status (and its error code) to the `AdapterError` leaf; see the module table."""
    if status == 200:
        return
    code, title = _first_error(body)
    what = f"{endpoint}: HTTP {status} {code} {title}".rstrip()
    if status == 404:
        # Upstream says "not found" in its error shape; a bare 404 page is some other server (a wrong base_url),
        # which must not pass for an answer about the person.
        if not _is_error_shape(body):
            raise ProviderMisconfigured(f"{what}: not the provider's error shape")
        raise SubjectNotFound(what)
    if status == 422 and code == "00391":
        raise IdentityAmbiguous(what)
    if status in (400, 422):
        raise ProviderRejectedQuery(what)
    if status == 429:
        wait = parse_retry_after(retry_after)
        raise ProviderRateLimited(f"API Particulier limits calls: try again "
                                  f"{f'in {wait:.0f} s' if wait is not None else 'later'}", retry_after=wait)
    if status == 504 and code.endswith("001") and not code.startswith("00"):
        raise ProviderUnavailable(what)  # xx001: the data provider is down or in maintenance
    if status == 504 and code.endswith("008") and not code.startswith("00"):
        # xx008: the data provider itself refuses more calls, behind upstream's gateway
        raise ProviderRateLimited(f"the data provider behind API Particulier limits calls ({code}): try again "
                                  "later", retry_after=None)
    if status == 504:
        # Upstream's gateway says 504 when the data provider timed out (code xx002) and when it timed out itself
        # (network error 00501, no code at all): either way the answer did not come in time.
        raise ProviderTimeout(what)
    raise ProviderUnavailable(what)


class ApiParticulierAdapter(ProviderAdapter):
    """API Particulier v3 for the datasets in `ROUTES`. `token` is the bearer token (a JWT upstream)."""

    def __init__(self, *, name: str, datasets: Mapping[str, int], session: aiohttp.ClientSession,
                 base_url: str, token: str, timeout: float = 5.0) -> None:
        unsupported = set(datasets) - SUPPORTED_DATASETS
        if unsupported:
            raise ValueError(f"API Particulier does not serve {', '.join(sorted(unsupported))}")
        if not token:
            raise ValueError("API Particulier needs a bearer token")
        super().__init__(name=name, datasets=datasets, session=session, timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self._token = token

    async def _fetch(self, query: AdapterQuery) -> dict[str, Any]:
        # any version of a dataset the adapter serves that has a route: old and new shapes side by side
        if query.dataset not in self.datasets or route_for(query.dataset, query.version) is None:
            raise ProviderRejectedQuery(f"{self.name} does not serve {query.dataset} v{query.version}")
        path, params = request_for(query)
        endpoint = f"{self.name} {path}"
        # FranceConnect mode: upstream takes the citizen's FranceConnect token in place of ours, and asks
        # FranceConnect whom it names
        bearer = query.subject.access_token if isinstance(query.subject, FranceConnectSubject) else self._token
        headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
        async with self.session.get(self.base_url + path, params=params, headers=headers,
                                    allow_redirects=False) as response:
            body = await read_body(response)
            status = response.status
            retry_after = response.headers.get("Retry-After")
        raise_for_status(endpoint, status, body, retry_after=retry_after)
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise ProviderAnswerMalformed(f"{endpoint}: answer is not JSON") from exc
        return to_dataset(query.dataset, query.version, answer)
