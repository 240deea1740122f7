"""The declarative HTTP adapter, configured as in a registry file, against the DGFiP sandbox over real HTTP."""

from __future__ import annotations

import socket
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import schemas
from adapters import http_json, registry
from adapters.base import (
    AdapterQuery,
    IdentityAmbiguous,
    ProviderAdapter,
    ProviderAnswerMalformed,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotFound,
)
from adapters.identity import PivotIdentity, ProviderIdentifier, Subject
from adapters.sandbox import directory
from adapters.sandbox.dgfip import create_app

KEY = "dgfip-test-key"
KEY_ENV = "DLNUF_TEST_DGFIP_KEY"
DATASET = "revenu_fiscal_reference"

# What an operator writes in the registry's [[adapters]] entry, `options` table.
OPTIONS_TOML = """
token_env = "DLNUF_TEST_DGFIP_KEY"
auth_header = "X-Api-Key"
timeout = 3
datasets = ["revenu_fiscal_reference"]

[endpoints.revenu_fiscal_reference]
pivot = { path = "/v1/revenu-fiscal", query = { nomNaissance = "family_name", prenoms = "given_name", dateNaissance = "birthdate", sexe = "sex", codeLieuNaissance = "birthplace_or_country" } }
identifiers = { spi = { path = "/v1/revenu-fiscal/spi/{identifier}" } }
statuses = { "409" = "ambiguous" }

[endpoints.revenu_fiscal_reference.fields]
annee_revenus = "/anneeRevenus"
revenu_fiscal_reference = "/revenuFiscalReference"
nombre_parts = "/nombreParts"
situation_famille = { pointer = "/situationFamille", values = { C = "celibataire", M = "marie", O = "pacse", D = "divorce", V = "veuf" } }
"""  # noqa: E501

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Build = Callable[..., ProviderAdapter]


def options(base_url: str, **change: Any) -> dict[str, Any]:
    return {**tomllib.loads(OPTIONS_TOML), "base_url": base_url, **change}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def dgfip_url(aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(create_app(KEY, slow_delay=2.0))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def build(session: aiohttp.ClientSession, dgfip_url: str) -> Build:
    def make(key: str = KEY, **change: Any) -> ProviderAdapter:
        return registry.build_adapter("http_json", "dgfip", options(dgfip_url, **change), session,
                                      environ={KEY_ENV: key})

    return make


def pivot(citizen_id: str, **change: str) -> Subject:
    p = directory().citizen(citizen_id).pivot
    return Subject(pivot=PivotIdentity(**{**p.to_json(), **change}))


def query(subject: Subject, version: int = 1) -> AdapterQuery:
    return AdapterQuery(DATASET, version, subject, frozenset(), "test", recipient="21750001600019")


def valid(document: dict[str, Any]) -> dict[str, Any]:
    jsonschema.Draft202012Validator(schemas.load(DATASET, 1)).validate(document)
    return document


# ------------------------------------------------------------------------------------------ happy paths


@pytest.mark.parametrize(("citizen_id", "expected"), [
    ("dupont-marie-claire", {"annee_revenus": 2023, "revenu_fiscal_reference": 9800, "nombre_parts": 2.0,
                             "situation_famille": "celibataire"}),
    ("rousseau-jean-baptiste", {"annee_revenus": 2023, "revenu_fiscal_reference": 52340, "nombre_parts": 4.0,
                                "situation_famille": "marie"}),
    ("el-amrani-fatima-zahra", {"annee_revenus": 2023, "revenu_fiscal_reference": 7200, "nombre_parts": 2.0,
                                "situation_famille": "divorce"}),
    ("oconnor-siobhan", {"annee_revenus": 2023, "revenu_fiscal_reference": 23900, "nombre_parts": 2.0,
                         "situation_famille": "marie"}),
    ("coeur-chloe", {"annee_revenus": 2023, "revenu_fiscal_reference": 41000, "nombre_parts": 2.0,
                     "situation_famille": "pacse"}),
    ("fournier-gerard", {"annee_revenus": 2023, "revenu_fiscal_reference": 15600, "nombre_parts": 1.0,
                         "situation_famille": "veuf"}),
])
async def test_pivot_lookup(build: Build, citizen_id: str, expected: dict[str, Any]) -> None:
    assert valid(await build().fetch(query(pivot(citizen_id)))) == expected


async def test_spi_lookup(build: Build) -> None:
    document = valid(await build().fetch(query(Subject(identifier=ProviderIdentifier("spi", "3123456789012")))))
    assert document["nombre_parts"] == 2.5


async def test_names_are_matched_after_normalisation(build: Build) -> None:
    document = await build().fetch(query(pivot("lefevre-d-arc-helene", family_name="LEFEVRE D ARC",
                                               given_name="HELENE")))
    assert valid(document)["revenu_fiscal_reference"] == 21900


# ------------------------------------------------------------------------------------------ faults


async def test_not_found(build: Build) -> None:
    with pytest.raises(SubjectNotFound):
        await build().fetch(query(pivot("roche-bernard")))
    with pytest.raises(SubjectNotFound):
        await build().fetch(query(Subject(identifier=ProviderIdentifier("spi", "9999999999999"))))


async def test_ambiguous(build: Build) -> None:
    with pytest.raises(IdentityAmbiguous):
        await build().fetch(query(pivot("martin-jean-pierre", given_name="Jean")))


async def test_unavailable_and_upstream_timeout(build: Build) -> None:
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        await build().fetch(query(pivot("panne-indisponible")))
    with pytest.raises(ProviderTimeout, match="HTTP 504"):
        await build().fetch(query(pivot("panne-delai-amont")))


async def test_timeout(build: Build) -> None:
    with pytest.raises(ProviderTimeout):
        await build(timeout=0.2).fetch(query(pivot("panne-lenteur")))


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = registry.build_adapter("http_json", "dgfip", options(f"http://127.0.0.1:{port}"), session,
                                     environ={KEY_ENV: KEY})
    with pytest.raises(ProviderUnavailable):
        await adapter.fetch(query(pivot("dupont-marie-claire")))


async def test_non_json(build: Build) -> None:
    with pytest.raises(ProviderAnswerMalformed, match="not JSON"):
        await build().fetch(query(pivot("panne-non-json")))


async def test_untranslatable_value_is_malformed(build: Build) -> None:
    with pytest.raises(ProviderAnswerMalformed, match="situation_famille"):
        await build().fetch(query(pivot("panne-invalide")))


async def test_schema_violation_reaches_the_broker_unaltered(build: Build) -> None:
    # Without the translation table the bad values pass through, and the dataset schema rejects them.
    change = options("http://unused")["endpoints"]
    del change[DATASET]["fields"]["situation_famille"]
    document = await build(endpoints=change).fetch(query(pivot("panne-invalide")))
    assert document["revenu_fiscal_reference"] == "38 250"
    with pytest.raises(jsonschema.ValidationError):
        valid(document)


async def test_bad_key(build: Build) -> None:
    with pytest.raises(ProviderUnavailable, match="HTTP 401"):
        await build(key="wrong").fetch(query(pivot("dupont-marie-claire")))


async def test_queries_that_cannot_be_expressed(build: Build) -> None:
    with pytest.raises(ProviderRejectedQuery):
        await build().fetch(query(Subject(identifier=ProviderIdentifier("ine", "123456789AB"))))
    with pytest.raises(ProviderRejectedQuery):
        await build().fetch(query(pivot("dupont-marie-claire"), version=2))
    endpoints = options("http://unused")["endpoints"]
    endpoints[DATASET]["pivot"]["full_birthdate"] = True
    with pytest.raises(ProviderRejectedQuery, match="full birth date"):
        await build(endpoints=endpoints).fetch(query(pivot("el-amrani-fatima-zahra")))


# ------------------------------------------------------------------------------------------ parameters


async def test_sources_fill_parameters_and_omit_unknowns(aiohttp_server: ServerFactory,
                                                         session: aiohttp.ClientSession) -> None:
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"v": {"rfr": 1}})

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    server = await aiohttp_server(app)
    endpoints = {DATASET: {
        "pivot": {"path": "/p", "query": {"n": "family_name", "p": "given_names", "y": "birth_year",
                                          "m": "birth_month", "d": "birth_day", "u": "preferred_name",
                                          "c": "birthplace", "k": "const:v1", "r": "recipient"}},
        "identifiers": {"spi": {"path": "/spi/{identifier}/avis"}},
        "fields": {"revenu_fiscal_reference": "/v/rfr"},
    }}
    adapter = registry.build_adapter("http_json", "t", {"base_url": str(server.make_url("")), "datasets": [DATASET],
                                                        "endpoints": endpoints}, session)
    document = await adapter.fetch(query(pivot("benali-ahmed")))
    assert document == {"revenu_fiscal_reference": 1}
    await adapter.fetch(query(Subject(identifier=ProviderIdentifier("spi", "30/12"))))
    first, second = seen
    assert list(first.query.items()) == [("n", "Benali"), ("p", "Ahmed"), ("y", "1970"), ("m", "4"), ("k", "v1"),
                                         ("r", "21750001600019")]
    assert "Authorization" not in first.headers
    assert second.raw_path == "/spi/30%2F12/avis"


# ------------------------------------------------------------------------------------------ configuration


def test_the_documented_example_is_valid() -> None:
    registry.check_options("http_json", options("https://dgfip.example"))


@pytest.mark.parametrize(("mutate", "key"), [
    (lambda o: o.pop("endpoints"), "endpoints:"),
    (lambda o: o.update(auth_header="X Api Key"), "auth_header:"),
    (lambda o: o.update(token_env="dgfip"), "token_env:"),
    (lambda o: o.update(datasets=["revenu_fiscal_reference", "quotient_familial"]), "endpoints.quotient_familial:"),
    (lambda o: o["endpoints"][DATASET]["pivot"]["query"].update(x="birth_weekday"),
     "endpoints.revenu_fiscal_reference.pivot.query.x:"),
    (lambda o: o["endpoints"][DATASET]["pivot"].update(path="/v1/{identifier}"),
     "endpoints.revenu_fiscal_reference.pivot.path:"),
    (lambda o: o["endpoints"][DATASET]["fields"].update(iban="/iban"),
     "endpoints.revenu_fiscal_reference.fields.iban:"),
    (lambda o: o["endpoints"][DATASET]["fields"].update(nombre_parts="nombreParts"),
     "endpoints.revenu_fiscal_reference.fields.nombre_parts.pointer:"),
    (lambda o: o["endpoints"][DATASET]["statuses"].update({"409": "retry"}),
     "endpoints.revenu_fiscal_reference.statuses.409:"),
    (lambda o: o["endpoints"][DATASET]["statuses"].update({"200": "not_found"}),
     "endpoints.revenu_fiscal_reference.statuses.200:"),
    (lambda o: o["endpoints"][DATASET].update(cache=True), "endpoints.revenu_fiscal_reference.cache:"),
])
def test_bad_configuration_names_the_key(mutate: Callable[[dict[str, Any]], Any], key: str) -> None:
    o = options("https://dgfip.example")
    mutate(o)
    with pytest.raises(registry.AdapterConfigError) as info:
        registry.check_options("http_json", o)
    assert str(info.value).startswith(key), str(info.value)


def test_missing_key_variable_is_reported_at_build(session: aiohttp.ClientSession) -> None:
    with pytest.raises(registry.AdapterConfigError, match=f"^token_env: .*{KEY_ENV}"):
        registry.build_adapter("http_json", "dgfip", options("https://dgfip.example"), session, environ={})


# ------------------------------------------------------------------------------------------ the sandbox itself


def test_every_notice_in_the_sandbox_maps_to_a_valid_document() -> None:
    endpoint = http_json.parse_endpoints(options("http://unused")["endpoints"], {DATASET: 1})[DATASET]
    checked = 0
    for c in directory().citizens:
        for notice in c.records.get("dgfip_record", {}).get("avis", []):
            if c.fault == "schema_violation":
                with pytest.raises(ProviderAnswerMalformed):
                    http_json.to_dataset(endpoint, DATASET, 1, notice)
                continue
            valid(http_json.to_dataset(endpoint, DATASET, 1, notice))
            checked += 1
    assert checked >= 15


async def test_sandbox_contract(aiohttp_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await aiohttp_server(create_app(KEY))
    url = str(server.make_url("/v1/revenu-fiscal"))
    params = {"nomNaissance": "Dupont", "prenoms": "Marie Claire", "dateNaissance": "1985-03-14", "sexe": "F",
              "codeLieuNaissance": "75114"}
    async with session.get(url, params=params) as r:
        assert (r.status, (await r.json())["code"]) == (401, "NON_AUTORISE")
    headers = {"X-Api-Key": KEY}
    async with session.get(url, params={**params, "anneeRevenus": "2022"}, headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["revenuFiscalReference"] == 9100
    async with session.get(url, params={**params, "dateNaissance": "14/03/1985"}, headers=headers) as r:
        assert (r.status, (await r.json())["code"]) == (400, "PARAMETRE_INVALIDE")
    async with session.get(url, params={**params, "dateNaissance": "1985-00-00"}, headers=headers) as r:
        assert r.status == 404  # an explicit 00 matches only an unknown month
    async with session.get(f"{url}/spi/123", headers=headers) as r:
        assert r.status == 400
