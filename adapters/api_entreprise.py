"""Adapter for API Entreprise (https://entreprise.api.gouv.fr, v3 and v4), the State's gateway to data about
businesses and associations: INSEE Sirene, URSSAF, DGFiP, Infogreffe, INPI, DJEPVA, GIP-MDS, the certification
bodies, MSA, PRO BTP and the European Commission's VIES.

Invariants:

* every call carries the bearer token and the three query parameters upstream makes mandatory: `recipient` (the
  SIRET of the administration the data is for), `context` (the framework of the call: a public tender, a grant)
  and `object` (the procedure's reference), taken from the exchange request; a call without them is refused
  before it is sent;
* a dataset is asked with a subject kind its endpoint takes (a SIREN, a SIRET, or a SIREN or an RNA number for an
  association, as its schema's ``x-subjects`` says; the pipeline refuses other kinds first, and so does the
  adapter); anything else is refused before calling;
* the answer's `data` is projected onto the dataset schema (members upstream adds later are not released) and
  otherwise passed through unchanged, so a wrong type is caught by the broker's schema validation; the list
  endpoints (`[{"data", "links", "meta"}, ...]`) become one member holding the list of items;
* error messages name the endpoint and the upstream error code, never the URL: it holds the business's number and
  the consumer's procedure reference, and these messages go to server logs.

Upstream errors (`{"errors": [{"code", "title", "detail", "source", "meta"}]}`, codes `<provider><3 digits>` or
`00<3 digits>` for API Entreprise's own) map to `AdapterError` leaves:

========================================  ==================================================================
upstream                                  adapter error
========================================  ==================================================================
404 in the error shape (xx003)            SubjectNotFound
404 not in it (a wrong base_url)          ProviderMisconfigured
400, 422 (00201-00203 call context,       ProviderRejectedQuery (asking again the same way will not help)
00301/00302/00333 malformed number,
00307 year, 00313 limit)
429 (00429)                               ProviderRateLimited, with upstream's Retry-After (or RateLimit-Reset)
451                                       SubjectNotDisclosable (data the business asked not to publish)
504 with code xx001 (provider             ProviderUnavailable
unavailable), xx004 (DNS), 00501
(network)
any other 504 (xx002, or no code)         ProviderTimeout: a gateway timeout is a timeout, whoever says it
401 (00101/00103/00105 token), 403        ProviderUnavailable (the broker's credential or privileges: the
(00100), 409 (00015, same request in      consumer can do nothing about it), or a transient failure
flight), 502 (xx999, xx05x, 04501,
04502), other 5xx
200 that is not the JSON envelope         ProviderAnswerMalformed
========================================  ==================================================================
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy

import schemas
from adapters.base import (
    AdapterQuery,
    ProviderAdapter,
    ProviderAnswerMalformed,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotDisclosable,
    SubjectNotFound,
    parse_retry_after,
    read_body,
)
from adapters.subjects import RNA, SIREN, SIRET, Rna, Siren, Siret, Subject

# How long to tell the consumer to wait after a 429 that says nothing: upstream's limits are per minute.
DEFAULT_RETRY_AFTER = 60.0
# Upstream caps call context values (`object` is "a short description, under 50 characters"); longer ones are
# refused before calling rather than cut, since a cut reference would not trace the call back.
MAX_CONTEXT, MAX_OBJECT = 100, 50


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a dataset lives upstream: a path with one subject placeholder, the subject kinds it takes, and, for
    list endpoints, the dataset member that holds the items."""

    path: str
    kinds: frozenset[str]
    collection: str | None = None

    def __post_init__(self) -> None:
        placeholders = set(re.findall(r"\{([a-z_]+)\}", self.path)) - {"year"}
        if len(placeholders) != 1 or not placeholders <= {"siren", "siret", "siren_or_rna"}:
            raise ValueError(f"{self.path}: one subject placeholder expected")


_S, _T = frozenset({SIREN}), frozenset({SIRET})
ENDPOINTS: Mapping[str, Endpoint] = {
    "unite_legale": Endpoint("/v4/insee/sirene/unites_legales/{siren}", _S),
    "unite_legale_diffusible": Endpoint("/v4/insee/sirene/unites_legales/diffusibles/{siren}", _S),
    "etablissement": Endpoint("/v4/insee/sirene/etablissements/{siret}", _T),
    "etablissement_diffusible": Endpoint("/v4/insee/sirene/etablissements/diffusibles/{siret}", _T),
    "attestation_vigilance": Endpoint("/v4/urssaf/unites_legales/{siren}/attestation_vigilance", _S),
    "attestation_fiscale": Endpoint("/v4/dgfip/unites_legales/{siren}/attestation_fiscale", _S),
    "extrait_kbis": Endpoint("/v3/infogreffe/rcs/unites_legales/{siren}/extrait_kbis", _S),
    "mandataires_sociaux": Endpoint("/v3/infogreffe/rcs/unites_legales/{siren}/mandataires_sociaux", _S,
                                    "mandataires_sociaux"),
    "extrait_rne": Endpoint("/v3/inpi/rne/unites_legales/{siren}/extrait_rne", _S),
    "beneficiaires_effectifs": Endpoint("/v3/inpi/rne/unites_legales/{siren}/beneficiaires_effectifs", _S,
                                        "beneficiaires_effectifs"),
    "association": Endpoint("/v4/djepva/api-association/associations/{siren_or_rna}", frozenset({SIREN, RNA})),
    "effectifs_annuels": Endpoint("/v3/gip_mds/unites_legales/{siren}/effectifs_annuels/{year}", _S),
    "certification_qualibat": Endpoint("/v4/qualibat/etablissements/{siret}/certification_batiment", _T),
    "certification_rge": Endpoint("/v3/ademe/etablissements/{siret}/certification_rge", _T, "certifications_rge"),
    "certification_qualiopi": Endpoint(
        "/v3/carif_oref/etablissements/{siret}/certifications_qualiopi_france_competences", _T),
    "certification_opqibi": Endpoint("/v3/opqibi/unites_legales/{siren}/certification_ingenierie", _S),
    "certification_qualifelec": Endpoint("/v3/qualifelec/etablissements/{siret}/certificats", _T,
                                         "certificats_qualifelec"),
    "conformite_cotisations_msa": Endpoint("/v3/msa/etablissements/{siret}/conformite_cotisations", _T),
    "conformite_cotisations_probtp": Endpoint("/v3/probtp/etablissements/{siret}/conformite_cotisations_retraite",
                                              _T),
    "numero_tva": Endpoint("/v3/european_commission/unites_legales/{siren}/numero_tva", _S),
}
SUPPORTED_DATASETS = frozenset(ENDPOINTS)


def business_number(subject: Subject) -> tuple[str, str]:
    """The subject's kind (siren, siret or rna) and number; `ProviderRejectedQuery` for a subject that is not a
    business. Numbers are checked when the subject is built (`adapters.subjects`): check digits, RNA format."""
    if isinstance(subject, Siren | Siret | Rna):
        return subject.kind, subject.value
    raise ProviderRejectedQuery("API Entreprise datasets are about a business: the subject must be a SIREN, a "
                                "SIRET or an RNA number")


def request_for(query: AdapterQuery, *, now: datetime | None = None) -> tuple[str, list[tuple[str, str]]]:
    """Path and query parameters for `query`; raises `ProviderRejectedQuery` when it cannot be expressed."""
    endpoint = ENDPOINTS.get(query.dataset)
    if endpoint is None:
        raise ProviderRejectedQuery(f"API Entreprise does not serve dataset {query.dataset!r}")
    kind, number = business_number(query.subject)
    if kind not in endpoint.kinds:
        raise ProviderRejectedQuery(f"{query.dataset} is looked up by {' or '.join(sorted(endpoint.kinds))}, "
                                    f"not by {kind}")
    context, reference = query.call_context.strip(), query.call_object.strip()
    if not (query.recipient and context and reference):
        raise ProviderRejectedQuery("API Entreprise requires on every call the recipient's SIRET, the context of "
                                    "the call and its object (the procedure's reference)")
    if len(context) > MAX_CONTEXT or len(reference) > MAX_OBJECT:
        raise ProviderRejectedQuery(f"API Entreprise takes a context of at most {MAX_CONTEXT} characters and an "
                                    f"object of at most {MAX_OBJECT}")
    # The year asked for (`annee`, checked against the schema's `x-parameters` at step 2), else the last full year:
    # the current year's headcount is not computed before it ends.
    year = str(query.parameters.get("annee") or (now or datetime.now(UTC)).year - 1)
    if not re.fullmatch(r"\d{4}", year):
        raise ProviderRejectedQuery(f"{query.dataset} takes a year of four digits, not {year!r}")
    path = re.sub(r"\{(siren|siret|siren_or_rna)\}", quote(number, safe=""), endpoint.path).replace("{year}", year)
    # The broker's recipient may name a service after the SIRET (`<siret>/<service>`); upstream takes the SIRET.
    return path, [("recipient", query.recipient.split("/", 1)[0]), ("context", context), ("object", reference)]


def to_dataset(dataset: str, version: int, answer: Any) -> dict[str, Any]:
    """The dataset document for an upstream 200 body: its `data`, keeping only what the schema declares."""
    if not isinstance(answer, dict) or "data" not in answer:
        raise ProviderAnswerMalformed("answer is not a JSON object with a 'data' member")
    data = answer["data"]
    collection = ENDPOINTS[dataset].collection
    if collection is not None:
        if not isinstance(data, list) or not all(isinstance(i, dict) and isinstance(i.get("data"), dict)
                                                 for i in data):
            raise ProviderAnswerMalformed("answer's 'data' is not a list of {data} objects")
        data = {collection: [item["data"] for item in data]}
    elif not isinstance(data, dict):
        raise ProviderAnswerMalformed("answer's 'data' is not an object")
    document: dict[str, Any] = schemas.project(data, schemas.load(dataset, version))
    return document


def _first_error(body: bytes) -> tuple[str, str] | None:
    """Code and title of the first upstream error; None when the body is not the error shape."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("errors"), list):
        return None
    first = parsed["errors"][0] if parsed["errors"] else {}
    if not isinstance(first, dict):
        return "", ""
    return str(first.get("code") or ""), str(first.get("title") or "")


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float:
    """Seconds to wait after a 429: `Retry-After` (seconds or an HTTP date), else `RateLimit-Reset` (upstream's
    end of the current window, a Unix time), else `DEFAULT_RETRY_AFTER`: upstream documents RateLimit-* headers
    rather than Retry-After, and a consumer told nothing would retry at once."""
    now = time.time() if now is None else now
    wait = parse_retry_after(headers.get("Retry-After"), now=now)
    if wait is not None:
        return wait
    reset = headers.get("RateLimit-Reset", "").strip()
    if reset.isascii() and reset.isdigit():
        # Upstream documents a timestamp; a small number is the draft standard's delta-seconds.
        wait = float(reset) - now if int(reset) > 1_000_000_000 else float(reset)
        return min(max(0.0, wait), 86400.0)
    return DEFAULT_RETRY_AFTER


# 504 codes that say the provider is down or unreachable, not slow: xx001 "Service non disponible", xx004 DNS, and
# API Entreprise's own 00501 "Erreur réseau".
_UNAVAILABLE_504 = re.compile(r"(?:(?!00)[0-9]{2}(?:001|004)|00501)")


def raise_for_status(endpoint: str, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """Map a non-200 upstream status (and its error code) to the `AdapterError` leaf; see the module table."""
    if status == 200:
        return
    shape = _first_error(body)
    code, title = shape or ("", "")
    what = f"{endpoint}: HTTP {status} {code} {title}".rstrip()
    if status == 404:
        # Upstream says "not found" in its error shape; a bare 404 page is some other server (a wrong base_url).
        if shape is None:
            raise ProviderMisconfigured(f"{what}: not the provider's error shape")
        raise SubjectNotFound(what)
    if status in (400, 422):
        raise ProviderRejectedQuery(what)
    if status == 429:
        wait = retry_after(headers)
        # Shown to the consumer (`public`): no endpoint, no number, only when to come back.
        raise ProviderRateLimited(f"API Entreprise answered 429 {code}: the broker's calls are over its rate "
                                  f"limit; retry in {math.ceil(wait)} s".replace("429 :", "429:"), retry_after=wait)
    if status == 451:
        raise SubjectNotDisclosable(what)
    if status == 504 and not _UNAVAILABLE_504.fullmatch(code):
        raise ProviderTimeout(what)
    raise ProviderUnavailable(what)


class ApiEntrepriseAdapter(ProviderAdapter):
    """API Entreprise for the datasets in `ENDPOINTS`. `token` is the bearer token (a JWT upstream)."""

    def __init__(self, *, name: str, datasets: Mapping[str, int], session: aiohttp.ClientSession,
                 base_url: str, token: str, timeout: float = 5.0) -> None:
        unsupported = set(datasets) - SUPPORTED_DATASETS
        if unsupported:
            raise ValueError(f"API Entreprise does not serve {', '.join(sorted(unsupported))}")
        if not token:
            raise ValueError("API Entreprise needs a bearer token")
        super().__init__(name=name, datasets=datasets, session=session, timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self._token = token

    async def _fetch(self, query: AdapterQuery) -> dict[str, Any]:
        if self.datasets.get(query.dataset) != query.version:
            raise ProviderRejectedQuery(f"{self.name} does not serve {query.dataset} v{query.version}")
        path, params = request_for(query)
        endpoint = f"{self.name} {ENDPOINTS[query.dataset].path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        async with self.session.get(self.base_url + path, params=params, headers=headers,
                                    allow_redirects=False) as response:
            body = await read_body(response)
            status = response.status
            response_headers: CIMultiDictProxy[str] = response.headers
        raise_for_status(endpoint, status, body, response_headers)
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise ProviderAnswerMalformed(f"{endpoint}: answer is not JSON") from exc
        return to_dataset(query.dataset, query.version, answer)
