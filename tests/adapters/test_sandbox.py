"""The API Particulier sandbox over real HTTP: upstream's paths, parameters, token check and error shapes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import MultiDict

import schemas
from adapters.api_particulier import ROUTES, VERSIONED_ROUTES
from adapters.sandbox import FAULTS, Citizen, directory
from adapters.sandbox.api_particulier import ENDPOINTS, create_app, start_sandbox

TOKEN = "sandbox-test-token"
RECIPIENT = "13002526500013"
QF = "/v3/dss/quotient_familial/identite"
RSA = "/v3/dss/revenu_solidarite_active/identite"
MESRI = "/v3/mesri/statut_etudiant/identite"
CNOUS_INE = "/v3/cnous/etudiant_boursier/ine"
FT = "/v3/france_travail/statut/identifiant"
SLOW = 0.3

Client = TestClient[web.Request, web.Application]
Params = list[tuple[str, str]]


@pytest.fixture
async def client(aiohttp_client: Callable[[web.Application], Awaitable[Client]]) -> Client:
    return await aiohttp_client(create_app(TOKEN, slow_delay=SLOW))


def civil(citizen_id: str, **override: Any) -> Params:
    """Query parameters for a citizen, as a careful DSS caller sends them; `override` replaces or drops (None)."""
    c = directory().citizen(citizen_id)
    year, month, day = c.birth
    base: dict[str, Any] = {
        "recipient": RECIPIENT, "nomNaissance": c.pivot.family_name, "prenoms[]": list(c.pivot.given_names),
        "anneeDateNaissance": str(year), "moisDateNaissance": str(month) if month else None,
        "jourDateNaissance": str(day) if day else None, "sexeEtatCivil": c.sex,
        "codeCogInseePaysNaissance": c.pivot.birthcountry, "codeCogInseeCommuneNaissance": c.pivot.birthplace or None,
    }
    base.update(override)
    params: Params = []
    for k, v in base.items():
        if v is None:
            continue
        params += [(k, x) for x in v] if isinstance(v, list) else [(k, v)]
    return params


async def get(client: Client, path: str, params: Params, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with client.get(path, params=params, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def error_code(body: Mapping[str, Any]) -> str:
    (err,) = body["errors"]
    assert set(err) == {"code", "title", "detail", "source", "meta"}
    return str(err["code"])


# ----------------------------------------------------------------------------------- the citizens


def test_directory_covers_the_documented_cases() -> None:
    d = directory()
    ordinary = [c for c in d.citizens if c.fault is None]
    assert len(ordinary) >= 20
    assert sorted(c.fault for c in d.citizens if c.fault) == sorted(FAULTS)
    assert all(c.tests for c in d.citizens)
    assert all(c.id.startswith("panne-") == (c.fault is not None) for c in d.citizens)
    given = [c.pivot for c in ordinary]
    assert any(len(p.given_names) >= 3 for p in given)
    assert any(p.preferred_name for p in given)
    assert any(p.birthcountry != "99100" for p in given)
    assert any(p.birthdate.endswith("-00-00") for p in given)
    assert any(p.birthdate.endswith("-00") and not p.birthdate.endswith("-00-00") for p in given)
    assert any(len(h["enfants"]) >= 3 for h in d.households.values())
    normalised = [p.normalised() for p in given]
    assert any(a[0] == b[0] and a[2:] == b[2:] and a != b for i, a in enumerate(normalised)
               for b in normalised[i + 1:]), "a homonym pair differing only in first names"


def _dataset_for(path: str) -> tuple[str, int]:
    routes = [((d, 1), r) for d, r in ROUTES.items()] + list(VERSIONED_ROUTES.items())
    for version, route in routes:
        if route.identity_path == path or any(p == path for p, _ in route.identifiers.values()):
            return version
    raise AssertionError(path)


def _rendered(c: Citizen) -> list[tuple[tuple[str, int], dict[str, Any]]]:
    d = directory()
    # no query: what an endpoint only answers within a searched perimeter (MEN's scolarités) is left out
    request: Any = type("R", (), {"query": MultiDict[str]()})()
    out = []
    for ep in ENDPOINTS:
        data = ep.render(c, d, request)
        if data is not None:
            out.append((_dataset_for(ep.path), data))
    return out


@pytest.mark.parametrize("citizen", [c for c in directory().citizens if c.fault != "schema_violation"],
                         ids=lambda c: c.id)
def test_every_record_is_a_valid_dataset_document(citizen: Citizen) -> None:
    for (dataset, version), data in _rendered(citizen):
        jsonschema.Draft202012Validator(schemas.load(dataset, version)).validate(data)


def test_the_schema_violation_citizen_breaks_every_dataset() -> None:
    rendered = _rendered(directory().citizen("panne-invalide"))
    assert len(rendered) >= 6
    for (dataset, version), data in rendered:
        assert not jsonschema.Draft202012Validator(schemas.load(dataset, version)).is_valid(data), dataset


# ----------------------------------------------------------------------------------- token, recipient


@pytest.mark.parametrize("token", [None, "wrong", ""])
async def test_bad_token_is_401_in_upstream_shape(client: Client, token: str | None) -> None:
    status, body = await get(client, QF, civil("dupont-marie-claire"), token=token)
    assert status == 401
    assert error_code(body) == "00101"
    assert body["errors"][0]["source"] == {"parameter": "token"}


async def test_basic_scheme_is_not_a_bearer(client: Client) -> None:
    async with client.get(QF, params=civil("dupont-marie-claire"), headers={"Authorization": f"Basic {TOKEN}"}) as r:
        assert r.status == 401


async def test_recipient_is_required(client: Client) -> None:
    status, body = await get(client, QF, civil("dupont-marie-claire", recipient=None))
    assert status == 422
    assert error_code(body) == "00203"


# ----------------------------------------------------------------------------------- matching


async def test_quotient_familial_answer_has_upstream_envelope(client: Client) -> None:
    status, body = await get(client, QF, civil("rousseau-jean-baptiste"))
    assert status == 200
    assert set(body) == {"data", "links", "meta"}
    data = body["data"]
    assert [a["prenoms"] for a in data["allocataires"]] == ["JEAN-BAPTISTE LOUIS MARIE", "CAMILLE ANNE"]
    assert len(data["enfants"]) == 3
    assert data["quotient_familial"]["valeur"] == 1045


@pytest.mark.parametrize(("citizen_id", "family_name"), [
    ("lefevre-d-arc-helene", "LEFEVRE D ARC"),
    ("lefevre-d-arc-helene", "lefèvre-d’arc"),
    ("lefevre-d-arc-helene", " Lefevre-D'Arc "),
    ("coeur-chloe", "COEUR"),
    ("de-la-tour-d-auvergne-anne-sophie", "DE LA TOUR D AUVERGNE"),
    ("ndiaye-noel", "N DIAYE"),
])
async def test_names_match_after_upstream_normalisation(client: Client, citizen_id: str, family_name: str) -> None:
    path = MESRI if citizen_id == "ndiaye-noel" else QF
    params = civil(citizen_id, nomNaissance=family_name)
    if path == MESRI:
        params = [(k, v) for k, v in params if k not in ("codeCogInseePaysNaissance",)]
    status, _ = await get(client, path, params)
    assert status == 200


@pytest.mark.parametrize(("first_names", "status"), [
    (["Jean-Baptiste"], 200),
    (["JEAN", "BAPTISTE"], 200),
    (["jean baptiste", "Louis"], 200),
    (["Jean-Baptiste", "Louis", "Marie"], 200),
    (["Louis"], 404),
    (["Jean-Baptiste", "Marie"], 404),
])
async def test_first_names_must_be_the_leading_ones(client: Client, first_names: list[str], status: int) -> None:
    got, _ = await get(client, QF, civil("rousseau-jean-baptiste", **{"prenoms[]": first_names}))
    assert got == status


async def test_homonyms_are_ambiguous_until_first_names_tell_them_apart(client: Client) -> None:
    status, body = await get(client, QF, civil("martin-jean-pierre", **{"prenoms[]": ["Jean"]}))
    assert status == 422
    assert error_code(body) == "00391"
    for first_names, expected in ((["Jean", "Pierre"], "JEAN PIERRE"), (["Jean", "Paul"], "JEAN PAUL")):
        status, body = await get(client, QF, civil("martin-jean-pierre", **{"prenoms[]": first_names}))
        assert status == 200
        assert body["data"]["allocataires"][0]["prenoms"] == expected


async def test_usage_name_is_not_a_birth_name(client: Client) -> None:
    status, body = await get(client, QF, civil("berger-camille", nomNaissance="Rousseau"))
    assert status == 404
    assert error_code(body) == "35003"
    status, _ = await get(client, QF, civil("berger-camille", nomUsage="Rousseau"))
    assert status == 200


@pytest.mark.parametrize(("citizen_id", "month", "day", "status"), [
    ("el-amrani-fatima-zahra", None, None, 200),
    ("el-amrani-fatima-zahra", "1", None, 404),
    ("el-amrani-fatima-zahra", "1", "1", 404),
    ("benali-ahmed", "4", None, 200),
    ("benali-ahmed", None, None, 200),
    ("benali-ahmed", "4", "1", 404),
    ("dupont-marie-claire", None, None, 200),
    ("dupont-marie-claire", "3", "15", 404),
])
async def test_unknown_birth_day_or_month(client: Client, citizen_id: str, month: str | None, day: str | None,
                                          status: int) -> None:
    got, _ = await get(client, RSA, civil(citizen_id, moisDateNaissance=month, jourDateNaissance=day))
    assert got == status


async def test_known_to_one_provider_and_not_another(client: Client) -> None:
    mesri = [(k, v) for k, v in civil("garnier-lucas", **{"prenoms[]": ["Lucas"]})
             if k != "codeCogInseePaysNaissance"]
    assert (await get(client, MESRI, mesri))[0] == 200
    status, body = await get(client, "/v3/cnous/etudiant_boursier/identite", mesri)
    assert status == 404
    assert error_code(body) == "26003"
    status, body = await get(client, QF, civil("garnier-lucas"))
    assert status == 404


@pytest.mark.parametrize("override", [
    {"codeCogInseePaysNaissance": None},
    {"codeCogInseeCommuneNaissance": None},
    {"codeCogInseePaysNaissance": "99350"},
    {"codeCogInseeCommuneNaissance": "7511"},
    {"sexeEtatCivil": "H"},
    {"sexeEtatCivil": None},
    {"prenoms[]": ["Marie", "Claire", "Anne", "Sophie"]},
    {"prenoms[]": None},
    {"nomNaissance": None},
    {"anneeDateNaissance": "85"},
    {"moisDateNaissance": "13"},
    {"nomCommuneNaissance": "Paris"},
])
async def test_malformed_civil_status_is_422_00366(client: Client, override: dict[str, Any]) -> None:
    status, body = await get(client, QF, civil("dupont-marie-claire", **override))
    assert status == 422
    assert error_code(body) in ("00366",)


async def test_mesri_takes_one_first_name_and_a_full_date(client: Client) -> None:
    base = [(k, v) for k, v in civil("moreau-lea") if k != "codeCogInseePaysNaissance"]
    assert (await get(client, MESRI, base))[0] == 200
    assert (await get(client, MESRI, [*base, ("prenoms[]", "Marie")]))[0] == 422
    assert (await get(client, MESRI, [(k, v) for k, v in base if k != "jourDateNaissance"]))[0] == 422


async def test_quotient_familial_for_another_month_is_not_found(client: Client) -> None:
    assert (await get(client, QF, [*civil("dupont-marie-claire"), ("annee", "2024"), ("mois", "6")]))[0] == 200
    assert (await get(client, QF, [*civil("dupont-marie-claire"), ("annee", "2023"), ("mois", "6")]))[0] == 404


# ----------------------------------------------------------------------------------- identifiers


async def test_ine_lookup(client: Client) -> None:
    status, body = await get(client, CNOUS_INE, [("recipient", RECIPIENT), ("ine", "123456789ab")])
    assert status == 200
    assert body["data"]["echelon_bourse"]["echelon"] == "0bis"
    status, body = await get(client, CNOUS_INE, [("recipient", RECIPIENT), ("ine", "123-456")])
    assert (status, error_code(body)) == (422, "00360")
    status, body = await get(client, CNOUS_INE, [("recipient", RECIPIENT), ("ine", "99999999999")])
    assert (status, error_code(body)) == (404, "26003")


async def test_france_travail_identifier_lookup(client: Client) -> None:
    status, body = await get(client, FT, [("recipient", RECIPIENT), ("identifiant", "S.OConnor")])
    assert status == 200
    assert body["data"]["identite"]["nom_usage"] == "DUBOIS"
    assert body["data"]["inscription"]["date_fin"] == "2024-12-31"
    status, body = await get(client, FT, [("recipient", RECIPIENT)])
    assert (status, error_code(body)) == (422, "00380")
    status, body = await get(client, FT, [("recipient", RECIPIENT), ("identifiant", "personne")])
    assert (status, error_code(body)) == (404, "24003")


# ----------------------------------------------------------------------------------- faults


async def test_fault_unavailable_is_503_on_every_lookup(client: Client) -> None:
    for path, params in ((QF, civil("panne-indisponible")),
                         (CNOUS_INE, [("recipient", RECIPIENT), ("ine", "0000000503A")]),
                         (FT, [("recipient", RECIPIENT), ("identifiant", "panne.503")])):
        status, body = await get(client, path, params)
        assert status == 503
        assert error_code(body).endswith("001")


async def test_fault_upstream_timeout_is_504_xx002(client: Client) -> None:
    status, body = await get(client, QF, civil("panne-delai-amont"))
    assert status == 504
    assert error_code(body) == "35002"


async def test_fault_not_json_is_an_html_200(client: Client) -> None:
    async with client.get(QF, params=civil("panne-non-json"), headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        assert (await r.text()).startswith("<!DOCTYPE html>")


async def test_fault_slow_answers_correctly_after_the_delay(client: Client) -> None:
    started = time.monotonic()
    status, body = await get(client, QF, civil("panne-lenteur"))
    assert time.monotonic() - started >= SLOW
    assert status == 200
    jsonschema.Draft202012Validator(schemas.load("quotient_familial", 1)).validate(body["data"])


async def test_fault_schema_violation_answers_200(client: Client) -> None:
    status, body = await get(client, QF, civil("panne-invalide"))
    assert status == 200
    assert body["data"]["quotient_familial"]["valeur"] == "1045"


# ----------------------------------------------------------------------------------- serving


async def test_start_sandbox_on_an_ephemeral_port() -> None:
    runner, url = await start_sandbox(TOKEN, slow_delay=SLOW)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+", url)
        async with aiohttp.ClientSession() as session, session.get(
                url + QF, params=civil("dupont-marie-claire"), headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
    finally:
        await runner.cleanup()


async def test_python_dash_m_serves_the_sandbox() -> None:
    env = {**os.environ, "DLNUF_SANDBOX_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.sandbox", "--port", "0", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        m = re.search(r"on (http://\S+)", line)
        assert m, line
        async with aiohttp.ClientSession() as session:
            async with session.get(m[1] + QF, params=civil("dupont-marie-claire"),
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            async with session.get(m[1] + "/dgfip/v1/revenu-fiscal/spi/3012345678901",
                                   headers={"X-Api-Key": TOKEN}) as r:
                assert r.status == 200
    finally:
        proc.terminate()
        await proc.wait()
