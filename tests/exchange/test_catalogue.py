"""The public catalogue and schema routes, on a real broker with a registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import schemas
from broker import registry
from broker.storage import db
from tests.broker_harness import Harness, broker_config, start_broker
from tests.factories import CONSUMER, LEGAL_URL, OTHER_CONSUMER, PROVIDER, TOKEN_ENV, consumer, registry_toml

PROBLEM = "https://dlnuf.org/problems/"


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, "unused")  # the catalogue never calls a provider
    paris, lyon = consumer(), consumer(OTHER_CONSUMER)
    text = registry_toml([paris, lyon])
    yield await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)


async def get(broker: Harness, path: str) -> tuple[int, str, bytes]:
    async with broker.client.get(path) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.read()


async def catalogue(broker: Harness) -> dict[str, Any]:
    status, content_type, body = await get(broker, "/v1/catalogue")
    assert status == 200 and content_type.startswith("application/json")
    doc: dict[str, Any] = json.loads(body)
    return doc


def entry(doc: dict[str, Any], dataset: str) -> dict[str, Any]:
    return next(d for d in doc["datasets"] if d["dataset"] == dataset)


def fields(doc: dict[str, Any], dataset: str, version: int = 1) -> dict[str, dict[str, Any]]:
    found = next(v for v in entry(doc, dataset)["versions"] if v["version"] == version)
    return {f["path"]: f for f in found["fields"]}


async def test_lists_every_dataset_and_version(broker: Harness) -> None:
    doc = await catalogue(broker)
    assert {d["dataset"]: [v["version"] for v in d["versions"]] for d in doc["datasets"]} == {
        k: list(v) for k, v in schemas.catalogue().items()}
    qf = entry(doc, "quotient_familial")
    assert qf["latest_version"] == 1
    [v1] = qf["versions"]
    schema = schemas.load("quotient_familial", 1)
    assert v1["title"] == schema["title"]
    assert v1["description"] == {"fr": schema["description"], "en": schema["x-description-en"]}
    assert v1["$id"] == schema["$id"]
    assert doc["registry_version"] == broker.state().registry.current.version


async def test_each_version_lists_the_subject_kinds_it_accepts(broker: Harness) -> None:
    doc = await catalogue(broker)
    [qf] = entry(doc, "quotient_familial")["versions"]
    assert qf["subjects"] == ["france_connect", "pivot_identity"]
    student, without_identity = entry(doc, "statut_etudiant")["versions"]
    assert student["subjects"] == ["ine", "pivot_identity"]
    assert without_identity["subjects"] == ["france_connect", "ine", "pivot_identity"]
    [job] = entry(doc, "statut_demandeur_emploi")["versions"]
    assert job["subjects"] == ["france_travail"]


async def test_each_version_lists_its_dataset_parameters(broker: Harness) -> None:
    doc = await catalogue(broker)
    [qf] = entry(doc, "quotient_familial")["versions"]
    annee, mois = qf["parameters"]
    assert (annee["name"], annee["type"], annee["required"], annee["requires"]) == ("annee", ["integer"], False, [])
    assert (mois["name"], mois["minimum"], mois["maximum"], mois["requires"]) == ("mois", 1, 12, ["annee"])
    assert mois["title"] == "Mois" and mois["description"]["fr"] and mois["description"]["en"]
    assert all(v["parameters"] == [] for v in entry(doc, "statut_etudiant")["versions"])


async def test_providers_come_from_the_registry(broker: Harness) -> None:
    doc = await catalogue(broker)
    assert entry(doc, "quotient_familial")["providers"] == [{
        "organisation": {"siret": PROVIDER, "name": "DINUM (API Particulier)"},
        "adapter": "api-particulier", "kind": "api_particulier"}]
    # no adapter serves it in this registry: listed, but with nobody to ask and no basis to ask under
    rfr = entry(doc, "revenu_fiscal_reference")
    assert rfr["providers"] == [] and rfr["legal_bases"] == []


async def test_legal_bases_are_distinct_and_name_no_consumer(broker: Harness) -> None:
    status, _, body = await get(broker, "/v1/catalogue")
    assert status == 200
    # both communes are habilitated under the same text: it is listed once, and neither commune appears
    assert entry(json.loads(body), "quotient_familial")["legal_bases"] == [
        {"type": "information", "title": "CRPA, article L114-8", "url": LEGAL_URL}]
    assert CONSUMER.encode() not in body and OTHER_CONSUMER.encode() not in body
    assert b"cantine-" not in body  # nor a habilitation id


async def test_fields_carry_type_and_bilingual_meaning(broker: Harness) -> None:
    qf = fields(await catalogue(broker), "quotient_familial")
    assert qf["quotient_familial.valeur"]["type"] == ["integer"]
    assert qf["quotient_familial.valeur"]["required"] is True
    assert qf["quotient_familial.fournisseur"]["enum"] == ["CNAF", "MSA"]
    assert qf["adresse.complement_information"]["type"] == ["string", "null"]
    assert qf["allocataires"]["type"] == ["array"]
    # members of array items are documented, through the $ref, but cannot be asked for alone
    assert qf["allocataires[].date_naissance"]["type"] == ["string"]
    assert qf["allocataires[].date_naissance"]["requestable"] is False
    assert qf["adresse.pays"]["requestable"] is True
    for path, f in qf.items():
        assert f["description"]["fr"] and f["description"]["en"], path
    # anyOf with a $ref and null, in another dataset
    assert fields(await catalogue(broker), "statut_demandeur_emploi")["inscription.date_fin"]["type"] == [
        "string", "null"]


async def test_requestable_fields_are_accepted_in_a_habilitation(broker: Harness) -> None:
    requestable = tuple(p for p, f in fields(await catalogue(broker), "quotient_familial").items()
                        if f["requestable"])
    assert "quotient_familial.mois_calcul" in requestable
    registry.parse_registry(registry_toml([consumer()], fields=requestable))


async def test_catalogue_follows_registry_changes(broker: Harness, database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        report = await registry.apply(conn, registry.parse_registry(
            registry_toml([broker.consumer], basis="proactive")), prune=True)
    finally:
        await conn.close()
    for _ in range(100):
        if broker.state().registry.current.version == report.version:
            break
        await asyncio.sleep(0.05)
    bases = entry(await catalogue(broker), "quotient_familial")["legal_bases"]
    assert [b["type"] for b in bases] == ["proactive"]


async def test_every_listed_schema_is_served_as_published(broker: Harness) -> None:
    doc = await catalogue(broker)
    for d in doc["datasets"]:
        for v in d["versions"]:
            status, content_type, body = await get(broker, v["schema"])
            assert status == 200, v["schema"]
            assert content_type == "application/schema+json"
            published = resources.files("schemas").joinpath(schemas.file_name(d["dataset"], v["version"]))
            assert body == published.read_bytes()
            assert json.loads(body)["$id"] == v["$id"]


@pytest.mark.parametrize("path", [
    "/v1/schemas/horoscope.v1.json", "/v1/schemas/quotient_familial.v9.json", "/v1/schemas/quotient_familial.vx.json",
    "/v1/schemas/quotient_familial.v01.json", "/v1/schemas/..%2Fbroker.v1.json",
])
async def test_unknown_schema_is_the_unknown_dataset_problem(broker: Harness, path: str) -> None:
    status, content_type, body = await get(broker, path)
    assert status == 404
    assert content_type.startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["type"] == PROBLEM + "unknown-dataset"
    assert "catalogue" in problem["detail"]


async def test_catalogue_needs_no_signature_and_its_answer_is_signed(broker: Harness) -> None:
    async with broker.client.get("/v1/catalogue") as resp:
        assert resp.status == 200
        assert "Signature" in resp.headers and "Content-Digest" in resp.headers
