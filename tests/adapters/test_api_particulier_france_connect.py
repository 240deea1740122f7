"""API Particulier's FranceConnect mode, end to end between sandboxes: a citizen logs in at the FranceConnect sandbox,
the token it gives goes to the API Particulier sandbox as the bearer, which asks FranceConnect's userinfo whom it
names, as upstream does. The adapter sends no identity at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.api_particulier import ApiParticulierAdapter
from adapters.base import AdapterQuery, ProviderRejectedQuery, ProviderUnavailable, SubjectNotFound
from adapters.sandbox import directory
from adapters.sandbox.api_particulier import create_app as particulier_app
from adapters.sandbox.franceconnect import create_app as franceconnect_app
from adapters.subjects import FranceConnectSubject
from schemas.validation import Validators
from tests.adapters.test_franceconnect_sandbox import CLIENTS, authorize, code_form, token_request

TOKEN = "particulier-token"
Client = TestClient[Any, Any]


@pytest.fixture
async def op(aiohttp_client: Callable[[web.Application], Awaitable[Client]]) -> Client:
    return await aiohttp_client(franceconnect_app(CLIENTS))


@pytest.fixture
async def particulier(aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], op: Client) -> str:
    app = particulier_app(TOKEN, france_connect_userinfo=str(op.make_url("/userinfo")))
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def login(op: Client, citizen_id: str) -> str:
    """The citizen's FranceConnect access token, from the sandbox's real authorization code flow."""
    status, tokens = await token_request(op, code_form(await authorize(op, citizen_id)))
    assert status == 200, tokens
    token: str = tokens["access_token"]
    return token


async def fetch(base_url: str, dataset: str, subject: FranceConnectSubject, version: int = 1) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        adapter = ApiParticulierAdapter(name="api-particulier", datasets={dataset: version}, session=session,
                                        base_url=base_url, token=TOKEN)
        return await adapter.fetch(AdapterQuery(dataset, version, subject, frozenset(), "t",
                                                recipient="21750001600019"))


@pytest.mark.parametrize(("dataset", "citizen_id"), [
    ("quotient_familial", "dupont-marie-claire"), ("revenu_solidarite_active", "dupont-marie-claire"),
    ("allocation_enfant_handicape", "berger-camille"), ("service_national", "bouaziz-yanis"),
    ("participation_familiale_eaje", "dupont-marie-claire"), ("service_civique", "moreau-lea"),
])
async def test_france_connect_mode_answers_about_the_token_s_citizen(op: Client, particulier: str, dataset: str,
                                                                      citizen_id: str) -> None:
    pivot = directory().citizen(citizen_id).pivot
    subject = FranceConnectSubject(pivot, await login(op, citizen_id))
    document = await fetch(particulier, dataset, subject)
    Validators().verify(dataset, 1, document)
    # the same answer as by identity: the token named that citizen
    by_identity = await fetch_by_identity(particulier, dataset, citizen_id)
    assert document == by_identity


async def fetch_by_identity(base_url: str, dataset: str, citizen_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        adapter = ApiParticulierAdapter(name="api-particulier", datasets={dataset: 1}, session=session,
                                        base_url=base_url, token=TOKEN)
        return await adapter.fetch(AdapterQuery(dataset, 1, directory().citizen(citizen_id).pivot, frozenset(),
                                                "t", recipient="21750001600019"))


async def test_the_token_not_the_identity_decides(op: Client, particulier: str) -> None:
    """The pivot identity beside the token is only for the subject key: upstream answers about the token's citizen."""
    token = await login(op, "roche-bernard")  # known to no provider
    with pytest.raises(SubjectNotFound):
        await fetch(particulier, "quotient_familial",
                    FranceConnectSubject(directory().citizen("dupont-marie-claire").pivot, token))


async def test_a_token_franceconnect_does_not_know_is_refused(particulier: str) -> None:
    forged = FranceConnectSubject(directory().citizen("dupont-marie-claire").pivot, "not-a-franceconnect-token")
    with pytest.raises(ProviderUnavailable, match="401"):
        await fetch(particulier, "quotient_familial", forged)


async def test_mesri_s_france_connect_answer_has_its_own_version(op: Client, particulier: str) -> None:
    """MESRI answers FranceConnect mode without `identite`: v1 requires it, so v2 (without) is what FranceConnect
    mode serves; by identity, v2 is the same answer with identite left out."""
    subject = FranceConnectSubject(directory().citizen("moreau-lea").pivot, await login(op, "moreau-lea"))
    document = await fetch(particulier, "statut_etudiant", subject, version=2)
    Validators().verify("statut_etudiant", 2, document)
    assert "identite" not in document and len(document["admissions"]) == 2


@pytest.mark.parametrize("citizen_id", ["moreau-lea", "ndiaye-noel"])
async def test_cnous_s_france_connect_answer_has_its_own_version(op: Client, particulier: str,
                                                                  citizen_id: str) -> None:
    """Cnous answers FranceConnect mode (/v4/cnous/etudiant_boursier/france_connect) without `identite`: v2 requires
    it, so v3 (without) is what FranceConnect mode serves; it is v2's answer by identity, identite left out."""
    subject = FranceConnectSubject(directory().citizen(citizen_id).pivot, await login(op, citizen_id))
    document = await fetch(particulier, "etudiant_boursier", subject, version=3)
    Validators().verify("etudiant_boursier", 3, document)
    assert "identite" not in document and "statut_boursier" in document
    async with aiohttp.ClientSession() as session:
        adapter = ApiParticulierAdapter(name="api-particulier", datasets={"etudiant_boursier": 2}, session=session,
                                        base_url=particulier, token=TOKEN)
        by_identity = await adapter.fetch(AdapterQuery("etudiant_boursier", 2, directory().citizen(citizen_id).pivot,
                                                       frozenset(), "t", recipient="21750001600019"))
    assert by_identity.pop("identite") and by_identity == document
    with pytest.raises(ProviderRejectedQuery, match="FranceConnect"):
        await fetch(particulier, "etudiant_boursier", subject, version=2)  # v2 requires identite


async def test_a_dataset_without_france_connect_mode_is_refused_before_calling(op: Client, particulier: str) -> None:
    subject = FranceConnectSubject(directory().citizen("moreau-lea").pivot, "t")
    with pytest.raises(ProviderRejectedQuery, match="FranceConnect"):
        await fetch(particulier, "statut_etudiant", subject)  # v1 requires identite, which this mode lacks
    with pytest.raises(ProviderRejectedQuery, match="FranceConnect"):
        await fetch(particulier, "statut_demandeur_emploi", subject)


async def test_ants_answers_for_a_vehicle_of_the_france_connect_user_only(op: Client, particulier: str) -> None:
    """ANTS exists only in FranceConnect mode, with the registration number as a dataset parameter: a vehicle of
    the token's citizen is answered, the same number for another citizen, or another number, is not found."""

    async def extract(citizen_id: str, plate: str) -> dict[str, Any]:
        subject = FranceConnectSubject(directory().citizen(citizen_id).pivot, await login(op, citizen_id))
        async with aiohttp.ClientSession() as session:
            adapter = ApiParticulierAdapter(name="api-particulier", datasets={"extrait_immatriculation_vehicule": 1},
                                            session=session, base_url=particulier, token=TOKEN)
            return await adapter.fetch(AdapterQuery("extrait_immatriculation_vehicule", 1, subject, frozenset(), "t",
                                                    recipient="21750001600019",
                                                    parameters={"immatriculation": "GH-482-KT"} if plate else {}))

    document = await extract("dupont-marie-claire", "GH-482-KT")
    Validators().verify("extrait_immatriculation_vehicule", 1, document)
    assert document["donnees_immatriculation_vehicule"]["numero_immatriculation"] == "GH-482-KT"
    with pytest.raises(SubjectNotFound):
        await extract("berger-camille", "GH-482-KT")
    with pytest.raises(ProviderRejectedQuery):
        await extract("dupont-marie-claire", "")  # upstream requires the number (422)
    # by pivot identity there is no such endpoint at all
    async with aiohttp.ClientSession() as session:
        adapter = ApiParticulierAdapter(name="api-particulier", datasets={"extrait_immatriculation_vehicule": 1},
                                        session=session, base_url=particulier, token=TOKEN)
        with pytest.raises(ProviderRejectedQuery, match="FranceConnect"):
            await adapter.fetch(AdapterQuery("extrait_immatriculation_vehicule", 1,
                                             directory().citizen("dupont-marie-claire").pivot, frozenset(), "t",
                                             recipient="21750001600019",
                                             parameters={"immatriculation": "GH-482-KT"}))
