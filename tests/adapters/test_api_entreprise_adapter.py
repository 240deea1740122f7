"""The API Entreprise adapter: the reference OpenAPI's examples and error codes, and the sandbox over real HTTP."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import schemas
from adapters import registry
from adapters.api_entreprise import (
    DEFAULT_RETRY_AFTER,
    ENDPOINTS,
    SUPPORTED_DATASETS,
    ApiEntrepriseAdapter,
    raise_for_status,
    request_for,
    retry_after,
    to_dataset,
)
from adapters.base import (
    AdapterError,
    AdapterQuery,
    ProviderAnswerMalformed,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotDisclosable,
    SubjectNotFound,
)
from adapters.identity import PivotIdentity
from adapters.sandbox import api_entreprise as sandbox
from adapters.subjects import ProviderIdentifier, Rna, Siren, Siret, Subject
from broker.service.problems import PROBLEMS, problem_for
from schemas.validation import InvalidParameters, Validators

TOKEN = "api-entreprise-test-token"
RECIPIENT = "13002526500013"
CONTEXT, OBJECT = "Marchés publics", "Marché 2026-127"
ALL = {d: schemas.latest(d) for d in SUPPORTED_DATASETS}
REFERENCE = json.loads(resources.files("adapters.sandbox").joinpath("api_entreprise_reference.json")
                       .read_text("utf-8"))["endpoints"]

# The sandbox's businesses (adapters/sandbox/businesses.json)
COMPANY, HEAD_OFFICE, CLOSED = "912345675", "91234567500017", "91234567500025"
PROTECTED, PROTECTED_SIRET = "823456785", "82345678500018"
ASSOCIATION, ASSOCIATION_RNA = "734567894", "W751234567"
BEHIND, BEHIND_SIRET = "888777661", "88877766100016"
REFERENCE_SIREN, REFERENCE_SIRET = "900111220", "90011122000019"
UNKNOWN = "799123450"

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sandbox_url(aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(sandbox.create_app(TOKEN, slow_delay=2.0))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def adapter(session: aiohttp.ClientSession, sandbox_url: str) -> ApiEntrepriseAdapter:
    return ApiEntrepriseAdapter(name="api-entreprise", datasets=ALL, session=session, base_url=sandbox_url,
                                token=TOKEN, timeout=3.0)


def business(kind: str, number: str) -> Subject:
    subject: Subject = {"siren": Siren, "siret": Siret, "rna": Rna}[kind](number)
    return subject


def query(dataset: str, subject: Subject, *, context: str = CONTEXT, obj: str = OBJECT,
          recipient: str = RECIPIENT, **parameters: int | str) -> AdapterQuery:
    return AdapterQuery(dataset=dataset, version=ALL[dataset], subject=subject, fields=frozenset(), request_id="t",
                        recipient=recipient, call_context=context, call_object=obj, parameters=parameters)


def subject_for(dataset: str, siren: str, siret: str) -> Subject:
    return business("siret", siret) if "siret" in ENDPOINTS[dataset].kinds else business("siren", siren)


# ------------------------------------------------------------------------------------------ reference examples


@pytest.mark.parametrize("dataset", sorted(SUPPORTED_DATASETS))
def test_the_reference_example_maps_and_validates(dataset: str) -> None:
    # The upstream example of the published OpenAPI, in its envelope, read as the adapter reads any answer, then
    # validated as the broker does on the hot path (formats asserted: an impossible date would fail).
    upstream = {"data": REFERENCE[ENDPOINTS[dataset].path]["data"], "links": {}, "meta": {}}
    document = to_dataset(dataset, ALL[dataset], upstream)
    Validators().verify(dataset, ALL[dataset], document)
    assert document == schemas.load(dataset, ALL[dataset])["examples"][0]


@pytest.mark.parametrize("dataset", sorted(SUPPORTED_DATASETS))
async def test_the_reference_example_comes_through_the_sandbox_and_the_adapter(
        adapter: ApiEntrepriseAdapter, dataset: str) -> None:
    # The sandbox's « reference » business answers every endpoint's example verbatim.
    subject = business("siren", REFERENCE_SIREN) if dataset == "association" else \
        subject_for(dataset, REFERENCE_SIREN, REFERENCE_SIRET)
    document = await adapter.fetch(query(dataset, subject))
    Validators().verify(dataset, ALL[dataset], document)
    upstream = {"data": REFERENCE[ENDPOINTS[dataset].path]["data"]}
    assert document == to_dataset(dataset, ALL[dataset], upstream)


def test_each_endpoint_takes_the_subject_kinds_its_schema_declares() -> None:
    for dataset, endpoint in ENDPOINTS.items():
        assert endpoint.kinds == schemas.subject_kinds(dataset, ALL[dataset]), dataset


def test_every_endpoint_of_the_adapter_is_in_the_reference_and_the_sandbox() -> None:
    assert {e.path for e in ENDPOINTS.values()} <= set(REFERENCE)
    assert {ENDPOINTS[d].path for d in ENDPOINTS} == set(sandbox.ENDPOINTS.values())
    assert {d: ENDPOINTS[d].path for d in ENDPOINTS} == dict(sandbox.ENDPOINTS)


# ------------------------------------------------------------------------------------------ error codes


def _expected(status: int, code: str | None) -> type[AdapterError]:
    if status == 404:
        return SubjectNotFound
    if status in (400, 422):
        return ProviderRejectedQuery
    if status == 429:
        return ProviderRateLimited
    if status == 451:
        return SubjectNotDisclosable
    if status == 504 and code is not None and (code == "00501" or code[2:] in ("001", "004")):
        return ProviderUnavailable
    if status == 504:
        return ProviderTimeout
    return ProviderUnavailable


def _problem_slug(error: AdapterError) -> str:
    return next(p.slug for cls, p in PROBLEMS if isinstance(error, cls))


ERRORS = sorted({(e["status"], e["code"]) for ep in REFERENCE.values() for e in ep["errors"]},
                key=lambda sc: (sc[0], sc[1] or ""))


@pytest.mark.parametrize(("status", "code"), ERRORS)
def test_every_documented_upstream_error_maps_to_a_problem_type(status: int, code: str | None) -> None:
    # Every status and code the reference OpenAPI documents for the served endpoints, as upstream sends it.
    example = next(e for ep in REFERENCE.values() for e in ep["errors"] if (e["status"], e["code"]) == (status, code))
    body = json.dumps({"errors": [{"code": code, "title": example["title"], "detail": example["detail"],
                                   "source": None, "meta": example.get("meta", {})}]}).encode()
    with pytest.raises(AdapterError) as raised:
        raise_for_status("api-entreprise /x", status, body, {})
    assert type(raised.value) is _expected(status, code)
    slug = _problem_slug(raised.value)
    assert slug == type(raised.value).slug and slug != "provider-error"
    assert (code or "") in str(raised.value)


def test_the_mapping_table_has_the_expected_problem_types() -> None:
    seen = {_problem_slug(_raised(status, code)) for status, code in ERRORS}
    assert seen == {"subject-not-found", "provider-rejected-query", "provider-rate-limited", "subject-not-disclosable",
                    "provider-timeout", "provider-unavailable"}


def _raised(status: int, code: str | None) -> AdapterError:
    body = json.dumps({"errors": [{"code": code, "title": "t", "detail": "d"}]}).encode()
    try:
        raise_for_status("e", status, body, {})
    except AdapterError as exc:
        return exc
    raise AssertionError("no error raised")


def test_a_gateway_timeout_without_a_code_is_a_timeout_and_a_bare_404_is_misconfiguration() -> None:
    with pytest.raises(ProviderTimeout):
        raise_for_status("e", 504, b"<html>504 Gateway Time-out</html>", {})
    with pytest.raises(ProviderMisconfigured):
        raise_for_status("e", 404, b"<html>Not Found</html>", {})
    with pytest.raises(ProviderUnavailable):
        raise_for_status("e", 503, b"", {})


def test_retry_after_reads_seconds_dates_and_rate_limit_reset() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
    assert retry_after({"Retry-After": "30"}, now=now) == 30
    assert retry_after({"Retry-After": "Wed, 02 Dec 2026 12:01:00 GMT"}, now=now) == 60
    assert retry_after({"RateLimit-Reset": str(int(now) + 42)}, now=now) == 42
    assert retry_after({"RateLimit-Reset": "15"}, now=now) == 15
    assert retry_after({}, now=now) == DEFAULT_RETRY_AFTER
    assert retry_after({"Retry-After": "soon"}, now=now) == DEFAULT_RETRY_AFTER


# ------------------------------------------------------------------------------------------ queries


def test_the_call_context_goes_in_every_query() -> None:
    path, params = request_for(query("attestation_vigilance", business("siren", COMPANY)))
    assert path == f"/v4/urssaf/unites_legales/{COMPANY}/attestation_vigilance"
    assert params == [("recipient", RECIPIENT), ("context", CONTEXT), ("object", OBJECT)]
    path, _ = request_for(query("effectifs_annuels", business("siren", COMPANY)),
                          now=datetime(2026, 12, 2, tzinfo=UTC))
    assert path == f"/v3/gip_mds/unites_legales/{COMPANY}/effectifs_annuels/2025"
    path, _ = request_for(query("association", business("rna", ASSOCIATION_RNA)))
    assert path == f"/v4/djepva/api-association/associations/{ASSOCIATION_RNA}"


def test_the_year_asked_for_reaches_the_upstream_path() -> None:
    path, _ = request_for(query("effectifs_annuels", business("siren", COMPANY), annee=2022),
                          now=datetime(2026, 12, 2, tzinfo=UTC))
    assert path == f"/v3/gip_mds/unites_legales/{COMPANY}/effectifs_annuels/2022"
    # Checked at step 2 already; the adapter still never puts anything but four digits in the path.
    with pytest.raises(ProviderRejectedQuery, match="four digits"):
        request_for(query("effectifs_annuels", business("siren", COMPANY), annee="20/2"))


@pytest.mark.parametrize("parameters", [
    {"annee": "2022"}, {"annee": 22}, {"annee": 1999}, {"annee": 2022.5}, {"annee": None}, {"year": 2022},
    {"annee": 2022, "mois": 3},
])
def test_a_malformed_year_is_refused_as_invalid_parameters(parameters: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters, match=r"effectifs_annuels v1 parameters") as refused:
        Validators().verify_parameters("effectifs_annuels", 1, parameters)
    assert problem_for(refused.value).slug == "invalid-parameters"


def test_the_year_is_optional_and_declared() -> None:
    Validators().verify_parameters("effectifs_annuels", 1, {})
    Validators().verify_parameters("effectifs_annuels", 1, {"annee": 2022})
    declared = schemas.parameters_schema("effectifs_annuels", 1)
    assert declared is not None and "required" not in declared and set(declared["properties"]) == {"annee"}


@pytest.mark.parametrize(("dataset", "subject", "why"), [
    ("unite_legale", business("siret", HEAD_OFFICE), "looked up by siren"),
    ("etablissement", business("siren", COMPANY), "looked up by siret"),
    ("association", business("siret", HEAD_OFFICE), "looked up by rna or siren"),
    ("unite_legale", ProviderIdentifier("ine", "1234567890A"), "must be a SIREN"),
    ("attestation_fiscale", PivotIdentity("Dupont", "Marie", "1985-03-14", "female", "75114", "99100"),
     "must be a SIREN"),
])
def test_subjects_a_dataset_does_not_take_are_refused_before_calling(dataset: str, subject: Subject,
                                                                      why: str) -> None:
    with pytest.raises(ProviderRejectedQuery, match=why):
        request_for(query(dataset, subject))


@pytest.mark.parametrize(("context", "obj", "recipient"), [
    ("", OBJECT, RECIPIENT), (CONTEXT, " ", RECIPIENT), (CONTEXT, OBJECT, ""), ("x" * 101, OBJECT, RECIPIENT),
    (CONTEXT, "x" * 51, RECIPIENT),
])
def test_a_call_without_its_context_is_refused_before_calling(context: str, obj: str, recipient: str) -> None:
    with pytest.raises(ProviderRejectedQuery, match=r"context|object"):
        request_for(query("unite_legale", business("siren", COMPANY), context=context, obj=obj, recipient=recipient))


def test_answers_not_in_the_envelope_are_malformed() -> None:
    for answer in ([], {"errors": []}, {"data": "x"}, {"data": {"x": 1}, "links": {}}):
        if answer == {"data": {"x": 1}, "links": {}}:
            assert to_dataset("numero_tva", 1, answer) == {}  # projected: the schema then refuses it
            continue
        with pytest.raises(ProviderAnswerMalformed):
            to_dataset("numero_tva", 1, answer)
    with pytest.raises(ProviderAnswerMalformed):
        to_dataset("mandataires_sociaux", 1, {"data": {"data": {}}})


# ------------------------------------------------------------------------------------------ the sandbox's businesses


async def test_a_company(adapter: ApiEntrepriseAdapter) -> None:
    ul = await adapter.fetch(query("unite_legale", business("siren", COMPANY)))
    assert ul["siren"] == COMPANY and ul["siret_siege_social"] == HEAD_OFFICE and ul["etat_administratif"] == "A"
    assert ul["personne_morale_attributs"]["raison_sociale"] == "ATELIERS DUPONT ET FILS"
    assert ul["status_diffusion"] == "diffusible" and ul["diffusable_commercialement"] is True
    attestation = await adapter.fetch(query("attestation_vigilance", business("siren", COMPANY)))
    assert attestation["entity_status"]["code"] == "ok" and attestation["date_fin_validite"]
    tva = await adapter.fetch(query("numero_tva", business("siren", COMPANY)))
    assert tva == {"tva_number": "FR62912345675"}
    headcount = await adapter.fetch(query("effectifs_annuels", business("siren", COMPANY), annee=2022))
    assert headcount["annee"] == "2022" and headcount["siren"] == COMPANY
    for dataset in sorted(SUPPORTED_DATASETS - {"association"}):
        document = await adapter.fetch(query(dataset, subject_for(dataset, COMPANY, HEAD_OFFICE)))
        Validators().verify(dataset, ALL[dataset], document)


async def test_a_closed_establishment(adapter: ApiEntrepriseAdapter) -> None:
    closed = await adapter.fetch(query("etablissement", business("siret", CLOSED)))
    assert closed["etat_administratif"] == "F" and closed["siege_social"] is False
    assert closed["date_fermeture"] == int(datetime(2023, 6, 30, tzinfo=UTC).timestamp())
    head = await adapter.fetch(query("etablissement", business("siret", HEAD_OFFICE)))
    assert head["etat_administratif"] == "A" and head["date_fermeture"] is None and head["siege_social"] is True


async def test_a_business_that_objected_to_publication(adapter: ApiEntrepriseAdapter) -> None:
    protected = await adapter.fetch(query("unite_legale", business("siren", PROTECTED)))
    assert protected["status_diffusion"] == "partiellement_diffusible"
    assert protected["diffusable_commercialement"] is False and protected["type"] == "personne_physique"
    with pytest.raises(SubjectNotDisclosable):
        await adapter.fetch(query("unite_legale_diffusible", business("siren", PROTECTED)))
    with pytest.raises(SubjectNotDisclosable):
        await adapter.fetch(query("etablissement_diffusible", business("siret", PROTECTED_SIRET)))
    public = await adapter.fetch(query("unite_legale_diffusible", business("siren", COMPANY)))
    assert public["status_diffusion"] == "diffusible"


async def test_an_association_by_rna_and_by_siren(adapter: ApiEntrepriseAdapter) -> None:
    by_rna = await adapter.fetch(query("association", business("rna", ASSOCIATION_RNA)))
    by_siren = await adapter.fetch(query("association", business("siren", ASSOCIATION)))
    assert by_rna == by_siren
    assert by_rna["rna"] == ASSOCIATION_RNA and by_rna["nom"] == "AMICALE DES JARDINS PARTAGÉS" and by_rna["active"]
    Validators().verify("association", 1, by_rna)


async def test_a_company_with_no_attestation(adapter: ApiEntrepriseAdapter) -> None:
    vigilance = await adapter.fetch(query("attestation_vigilance", business("siren", BEHIND)))
    assert vigilance["entity_status"]["code"] == "refus_de_delivrance"
    assert vigilance["document_url"] is None and vigilance["date_debut_validite"] is None
    Validators().verify("attestation_vigilance", 1, vigilance)
    with pytest.raises(SubjectNotFound, match="03003"):
        await adapter.fetch(query("attestation_fiscale", business("siren", BEHIND)))
    assert await adapter.fetch(query("conformite_cotisations_msa", business("siret", BEHIND_SIRET))) == \
        {"status": "outdated"}
    assert await adapter.fetch(query("conformite_cotisations_probtp", business("siret", BEHIND_SIRET))) == \
        {"eligible": False}


async def test_an_unknown_siren(adapter: ApiEntrepriseAdapter) -> None:
    with pytest.raises(SubjectNotFound, match="01003"):
        await adapter.fetch(query("unite_legale", business("siren", UNKNOWN)))
    with pytest.raises(SubjectNotFound, match="04003"):
        await adapter.fetch(query("attestation_vigilance", business("siren", UNKNOWN)))


@pytest.mark.parametrize(("siren", "error", "text"), [
    ("900222332", ProviderRateLimited, "retry in 30 s"),
    ("900333444", ProviderTimeout, "04002"),
    ("900444555", ProviderUnavailable, "04001"),
    ("900666777", ProviderUnavailable, "04999"),
])
async def test_upstream_faults(session: aiohttp.ClientSession, sandbox_url: str, siren: str,
                               error: type[AdapterError], text: str) -> None:
    adapter = ApiEntrepriseAdapter(name="api-entreprise", datasets=ALL, session=session, base_url=sandbox_url,
                                   token=TOKEN, timeout=3.0)
    with pytest.raises(error, match=text) as raised:
        await adapter.fetch(query("attestation_vigilance", business("siren", siren)))
    assert type(raised.value) is error
    if error is ProviderRateLimited:
        assert isinstance(raised.value, ProviderRateLimited) and raised.value.retry_after == 30


async def test_a_slow_provider_is_a_timeout(session: aiohttp.ClientSession, sandbox_url: str) -> None:
    adapter = ApiEntrepriseAdapter(name="api-entreprise", datasets=ALL, session=session, base_url=sandbox_url,
                                   token=TOKEN, timeout=0.3)
    with pytest.raises(ProviderTimeout):
        await adapter.fetch(query("numero_tva", business("siren", "900555665")))


async def test_a_wrong_token_is_the_brokers_fault_not_the_consumers(session: aiohttp.ClientSession,
                                                                   sandbox_url: str) -> None:
    adapter = ApiEntrepriseAdapter(name="api-entreprise", datasets=ALL, session=session, base_url=sandbox_url,
                                   token="wrong", timeout=3.0)
    with pytest.raises(ProviderUnavailable, match="401 00101"):
        await adapter.fetch(query("numero_tva", business("siren", COMPANY)))


async def test_the_sandbox_checks_the_call_context_like_upstream(session: aiohttp.ClientSession,
                                                                sandbox_url: str) -> None:
    url = f"{sandbox_url}/v3/european_commission/unites_legales/{COMPANY}/numero_tva"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    full = {"context": CONTEXT, "object": OBJECT, "recipient": RECIPIENT}
    for missing, code in (("context", "00201"), ("object", "00202"), ("recipient", "00203")):
        params = {k: v for k, v in full.items() if k != missing}
        async with session.get(url, params=params, headers=headers) as response:
            assert response.status == 422
            assert (await response.json())["errors"][0]["code"] == code
    async with session.get(url.replace(COMPANY, "912345676"), params=full, headers=headers) as response:
        assert response.status == 422 and (await response.json())["errors"][0]["code"] == "00301"
    async with session.get(url, params=full) as response:
        assert response.status == 401 and (await response.json())["errors"][0]["code"] == "00101"


def test_the_sandbox_refuses_a_malformed_directory() -> None:
    reference = resources.files("adapters.sandbox").joinpath("api_entreprise_reference.json").read_text("utf-8")

    def load(**changes: Any) -> None:
        raw = {"id": "x", "tests": "t", "siren": COMPANY, "name": "X", "sirets": {HEAD_OFFICE: {"siege": True}},
               **changes}
        sandbox.load_businesses(json.dumps({"businesses": [raw]}), reference)

    load()
    with pytest.raises(ValueError, match="check digit"):
        load(siren="912345676")
    with pytest.raises(ValueError, match="SIRET"):
        load(sirets={"91234567500018": {"siege": True}})
    with pytest.raises(ValueError, match="head office"):
        load(sirets={HEAD_OFFICE: {}})
    with pytest.raises(ValueError, match="unknown endpoint"):
        load(answers={"kbis": {}})


def test_the_registry_builds_the_adapter_and_checks_its_datasets(session: aiohttp.ClientSession) -> None:
    options = {"base_url": "https://entreprise.api.gouv.fr", "token_env": "DLNUF_API_ENTREPRISE_TOKEN",
               "datasets": ["unite_legale", "attestation_vigilance"]}
    built = registry.build_adapter("api_entreprise", "api-entreprise", options, session,
                                   environ={"DLNUF_API_ENTREPRISE_TOKEN": "t"})
    assert isinstance(built, ApiEntrepriseAdapter) and built.datasets == {"unite_legale": 1,
                                                                          "attestation_vigilance": 1}
    with pytest.raises(registry.AdapterConfigError, match="cannot serve 'quotient_familial'"):
        registry.check_options("api_entreprise", {**options, "datasets": ["quotient_familial"]})


def test_the_documented_registry_entry_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "adapters.md").read_text("utf-8")
    section = doc.split("## API Entreprise: a Python adapter", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    [entry] = tomllib.loads(block.group(1))["adapters"]
    assert entry["kind"] == "api_entreprise"
    registry.check_options(entry["kind"], entry["options"] | {"datasets": entry["datasets"]})
