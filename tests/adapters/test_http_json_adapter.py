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
from adapters.identity import PivotIdentity
from adapters.sandbox import directory
from adapters.sandbox.dgfip import create_app
from adapters.subjects import ProviderIdentifier, Subject

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
pivot = { path = "/v1/revenu-fiscal", query = { nomNaissance = "family_name", prenoms = "given_name", dateNaissance = "birthdate", sexe = "sex", codeLieuNaissance = "birthplace_or_country", anneeRevenus = "parameter:annee_revenus" } }
identifiers = { spi = { path = "/v1/revenu-fiscal/spi/{identifier}", query = { anneeRevenus = "parameter:annee_revenus" } } }
statuses = { "409" = "ambiguous" }

[endpoints.revenu_fiscal_reference.fields]
annee_revenus = "/anneeRevenus"
revenu_fiscal_reference = "/revenuFiscalReference"
nombre_parts = "/nombreParts"
situation_famille = { pointer = "/situationFamille", values = { C = "celibataire", M = "marie", O = "pacse", D = "divorce", V = "veuf" } }
"""  # noqa: E501

# The same provider's POST search: the civil status in a JSON body, first names as an array.
POST_PIVOT: dict[str, Any] = {
    "method": "POST", "path": "/v1/revenu-fiscal/recherche", "idempotent": True,
    "body": {"contribuable": {"nomNaissance": "family_name", "prenoms": "given_names", "dateNaissance": "birthdate",
                              "sexe": "sex", "codeLieuNaissance": "birthplace_or_country"}},
}

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
    return PivotIdentity(**{**p.to_json(), **change})


def query(subject: Subject, version: int = 1, **parameters: int | str) -> AdapterQuery:
    return AdapterQuery(DATASET, version, subject, frozenset(), "test", recipient="21750001600019",
                        parameters=parameters)


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
    document = valid(await build().fetch(query(ProviderIdentifier("spi", "3123456789012"))))
    assert document["nombre_parts"] == 2.5


async def test_a_dataset_parameter_is_sent_where_the_entry_says(build: Build) -> None:
    """`parameter:annee_revenus` sends the request's fiscal year as `anneeRevenus`; absent, it is not sent and the
    provider answers its latest year."""
    subject = ProviderIdentifier("spi", "3012345678901")
    assert valid(await build().fetch(query(subject, annee_revenus=2022)))["revenu_fiscal_reference"] == 9100
    assert valid(await build().fetch(query(subject)))["revenu_fiscal_reference"] == 9800
    by_identity = await build().fetch(query(pivot("dupont-marie-claire"), annee_revenus=2022))
    assert valid(by_identity)["annee_revenus"] == 2022


async def test_names_are_matched_after_normalisation(build: Build) -> None:
    document = await build().fetch(query(pivot("lefevre-d-arc-helene", family_name="LEFEVRE D ARC",
                                               given_name="HELENE")))
    assert valid(document)["revenu_fiscal_reference"] == 21900


# ------------------------------------------------------------------------------------------ faults


async def test_not_found(build: Build) -> None:
    with pytest.raises(SubjectNotFound):
        await build().fetch(query(pivot("roche-bernard")))
    with pytest.raises(SubjectNotFound):
        await build().fetch(query(ProviderIdentifier("spi", "9999999999999")))


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
        await build().fetch(query(ProviderIdentifier("ine", "123456789AB")))
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
    await adapter.fetch(query(ProviderIdentifier("spi", "30/12")))
    first, second = seen
    assert list(first.query.items()) == [("n", "Benali"), ("p", "Ahmed"), ("y", "1970"), ("m", "4"), ("k", "v1"),
                                         ("r", "21750001600019")]
    assert "Authorization" not in first.headers
    assert second.raw_path == "/spi/30%2F12/avis"


# ------------------------------------------------------------------------------------------ POST lookups


def posting(pivot_lookup: dict[str, Any] = POST_PIVOT) -> dict[str, Any]:
    """The documented endpoints, with the pivot lookup replaced."""
    endpoints: dict[str, Any] = options("http://unused")["endpoints"]
    endpoints[DATASET]["pivot"] = pivot_lookup
    return endpoints


@pytest.mark.parametrize(("citizen_id", "expected"), [
    ("dupont-marie-claire", 9800),
    ("lefevre-d-arc-helene", 21900),
    ("el-amrani-fatima-zahra", 7200),
])
async def test_post_lookup_against_the_sandbox(build: Build, citizen_id: str, expected: int) -> None:
    document = valid(await build(endpoints=posting()).fetch(query(pivot(citizen_id))))
    assert document["revenu_fiscal_reference"] == expected


async def test_post_lookup_outcomes(build: Build) -> None:
    adapter = build(endpoints=posting())
    with pytest.raises(IdentityAmbiguous):
        await adapter.fetch(query(pivot("martin-jean-pierre", given_name="Jean")))
    with pytest.raises(SubjectNotFound):
        await adapter.fetch(query(pivot("roche-bernard")))
    with pytest.raises(ProviderUnavailable, match="POST /v1/revenu-fiscal/recherche: HTTP 503"):
        await adapter.fetch(query(pivot("panne-indisponible")))
    # the identifier lookup of the same entry is still a GET
    document = await adapter.fetch(query(ProviderIdentifier("spi", "3123456789012")))
    assert document["nombre_parts"] == 2.5
    # a body the provider refuses: no sexe, so the sandbox answers 400
    lookup = {**POST_PIVOT, "body": {"contribuable": {"nomNaissance": "family_name", "prenoms": "given_names",
                                                      "dateNaissance": "birthdate"}}}
    with pytest.raises(ProviderRejectedQuery, match="HTTP 400"):
        await build(endpoints=posting(lookup)).fetch(query(pivot("dupont-marie-claire")))


async def test_body_sources_nesting_and_omissions(aiohttp_server: ServerFactory,
                                                  session: aiohttp.ClientSession) -> None:
    seen: list[tuple[str, str, str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, request.content_type,
                     await request.json() if request.can_read_body else None))
        return web.json_response({"rfr": 1})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    endpoints = {DATASET: {
        "pivot": {"method": "POST", "path": "/p", "query": {"v": "const:2"}, "body": {
            "nom": "family_name", "prenoms": "given_names", "premier": "first_given_name",
            "usage": "preferred_name", "canal": "const:web", "pour": "recipient",
            "naissance": {"annee": "birth_year", "mois": "birth_month", "jour": "birth_day",
                          "lieu": {"commune": "birthplace", "pays": "birthcountry"}},
            # every member unknown for this person: the object is left out too
            "inconnu": {"commune": "birthplace", "jour": "birth_day"},
        }},
        "identifiers": {
            "spi": {"method": "POST", "path": "/spi/{identifier}", "body": {"demande.spi": "identifier"}},
            "fip": {"method": "POST", "path": "/fip"},
        },
        "fields": {"revenu_fiscal_reference": "/rfr"},
    }}
    adapter = registry.build_adapter("http_json", "t", {"base_url": str(server.make_url("")), "datasets": [DATASET],
                                                        "endpoints": endpoints}, session)
    assert await adapter.fetch(query(pivot("benali-ahmed", given_name="Ahmed Karim"))) == {
        "revenu_fiscal_reference": 1}
    await adapter.fetch(query(ProviderIdentifier("spi", "30/12")))
    await adapter.fetch(query(ProviderIdentifier("fip", "x")))
    first, second, third = seen
    assert first == ("POST", "/p?v=2", "application/json", {
        "nom": "Benali", "prenoms": ["Ahmed", "Karim"], "premier": "Ahmed", "canal": "web", "pour": "21750001600019",
        "naissance": {"annee": "1970", "mois": "4", "lieu": {"pays": "99352"}},
    })
    # a quoted TOML key with a dot is one member name, not a path
    assert second == ("POST", "/spi/30%2F12", "application/json", {"demande.spi": "30/12"})
    assert third[:2] == ("POST", "/fip") and third[3] is None


@pytest.mark.parametrize(("idempotent", "hits"), [(False, 1), (True, 2)])
async def test_post_is_repeated_after_a_transport_failure_only_when_idempotent(
        aiohttp_server: ServerFactory, session: aiohttp.ClientSession, idempotent: bool, hits: int) -> None:
    seen: list[web.Request] = []

    async def drop_first(request: web.Request) -> web.Response:
        seen.append(request)
        if len(seen) == 1:
            # The provider received the call and dies before answering: did it act on it? Only an idempotent
            # call may be sent again.
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"revenuFiscalReference": 1})

    app = web.Application()
    app.router.add_post("/p", drop_first)
    server = await aiohttp_server(app)
    endpoints = {DATASET: {"pivot": {"method": "POST", "path": "/p", "idempotent": idempotent},
                           "fields": {"revenu_fiscal_reference": "/revenuFiscalReference"}}}
    adapter = registry.build_adapter("http_json", "t", {"base_url": str(server.make_url("")), "datasets": [DATASET],
                                                        "endpoints": endpoints}, session)
    assert adapter.policy.retries == (2 if idempotent else 0)
    if idempotent:
        assert await adapter.fetch(query(pivot("dupont-marie-claire"))) == {"revenu_fiscal_reference": 1}
    else:
        with pytest.raises(ProviderUnavailable):
            await adapter.fetch(query(pivot("dupont-marie-claire")))
    assert len(seen) == hits


async def test_a_5xx_answer_to_a_post_is_never_repeated(aiohttp_server: ServerFactory,
                                                        session: aiohttp.ClientSession) -> None:
    # adapters/base.py repeats a 5xx answer only for GET and HEAD, whatever the entry says.
    hits: list[int] = []

    async def fail(request: web.Request) -> web.Response:
        hits.append(1)
        return web.json_response({"code": "INDISPONIBLE"}, status=503)

    app = web.Application()
    app.router.add_post("/p", fail)
    server = await aiohttp_server(app)
    endpoints = {DATASET: {"pivot": {"method": "POST", "path": "/p", "idempotent": True},
                           "fields": {"revenu_fiscal_reference": "/revenuFiscalReference"}}}
    adapter = registry.build_adapter("http_json", "t", {"base_url": str(server.make_url("")), "datasets": [DATASET],
                                                        "endpoints": endpoints}, session)
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        await adapter.fetch(query(pivot("dupont-marie-claire")))
    assert len(hits) == 1


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
    (lambda o: o["endpoints"][DATASET]["pivot"].update(method="PUT"),
     "endpoints.revenu_fiscal_reference.pivot.method:"),
    (lambda o: o["endpoints"][DATASET]["pivot"].update(method="post"),
     "endpoints.revenu_fiscal_reference.pivot.method:"),
    (lambda o: o["endpoints"][DATASET]["pivot"].update(body={"nom": "family_name"}),
     "endpoints.revenu_fiscal_reference.pivot.body: only a POST"),
    (lambda o: o["endpoints"][DATASET]["pivot"].update(idempotent=True),
     "endpoints.revenu_fiscal_reference.pivot.idempotent: a GET lookup"),
    (lambda o: o["endpoints"].update(posting({**POST_PIVOT, "idempotent": "yes"})),
     "endpoints.revenu_fiscal_reference.pivot.idempotent: must be true or false"),
    (lambda o: o["endpoints"].update(posting({**POST_PIVOT, "body": {"a": {"b": "shoe_size"}}})),
     "endpoints.revenu_fiscal_reference.pivot.body.a.b: unknown source 'shoe_size'"),
    (lambda o: o["endpoints"].update(posting({**POST_PIVOT, "body": {"a": "identifier"}})),
     "endpoints.revenu_fiscal_reference.pivot.body.a: unknown source 'identifier'"),
    (lambda o: o["endpoints"].update(posting({**POST_PIVOT, "body": {"annee": 2023}})),
     "endpoints.revenu_fiscal_reference.pivot.body.annee: must be a source name"),
    (lambda o: o["endpoints"].update(posting({**POST_PIVOT, "body": ["family_name"]})),
     "endpoints.revenu_fiscal_reference.pivot.body: must be a table"),
    (lambda o: (o["endpoints"].update(posting({**POST_PIVOT, "idempotent": False})), o.update(retries=1)),
     "retries: endpoints.revenu_fiscal_reference.pivot is a POST without idempotent = true"),
])
def test_bad_configuration_names_the_key(mutate: Callable[[dict[str, Any]], Any], key: str) -> None:
    o = options("https://dgfip.example")
    mutate(o)
    with pytest.raises(registry.AdapterConfigError) as info:
        registry.check_options("http_json", o)
    assert str(info.value).startswith(key), str(info.value)


def test_post_retries_follow_idempotence(session: aiohttp.ClientSession) -> None:
    def policy(lookup: dict[str, Any], **change: Any) -> int:
        o = options("https://dgfip.example", endpoints=posting(lookup), **change)
        return registry.build_adapter("http_json", "dgfip", o, session, environ={KEY_ENV: KEY}).policy.retries

    assert policy(POST_PIVOT) == 2
    assert policy(POST_PIVOT, retries=4) == 4
    unsafe = {k: v for k, v in POST_PIVOT.items() if k != "idempotent"}
    assert policy(unsafe) == 0
    # one unsafe lookup is enough: the policy is the adapter's, and its GET lookups lose their retries too
    assert policy(unsafe, retries=0) == 0


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


async def test_sandbox_post_contract(aiohttp_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    server = await aiohttp_server(create_app(KEY))
    url = str(server.make_url("/v1/revenu-fiscal/recherche"))
    who = {"nomNaissance": "Dupont", "prenoms": ["Marie", "Claire"], "dateNaissance": "1985-03-14", "sexe": "F",
           "codeLieuNaissance": "75114"}
    async with session.post(url, json={"contribuable": who}) as r:
        assert (r.status, (await r.json())["code"]) == (401, "NON_AUTORISE")
    headers = {"X-Api-Key": KEY}
    async with session.post(url, json={"contribuable": who, "anneeRevenus": "2022"}, headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["revenuFiscalReference"] == 9100
    for bad in ({"contribuable": {**who, "prenoms": "Marie Claire"}}, {"contribuable": {**who, "sexe": None}},
                {"who": who}, [who], {"contribuable": who, "anneeRevenus": 2022}):
        async with session.post(url, json=bad, headers=headers) as r:
            assert (r.status, (await r.json())["code"]) == (400, "PARAMETRE_INVALIDE"), bad
    async with session.post(url, data="nomNaissance=Dupont", headers=headers) as r:
        assert r.status == 400
