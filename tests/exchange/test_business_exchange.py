"""Exchanges about businesses end to end: real broker, real PostgreSQL, the API Entreprise sandbox over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_entreprise import create_app as sandbox_app
from adapters.subjects import Siren, subject_key
from broker.cli import demo
from broker.service.state import STATE
from broker.signing.keys import generate_private_key
from broker.tlog.jcs import canonicalize
from tests.broker_harness import Harness, broker_config, pivot, start_broker
from tests.factories import SANDBOX_TOKEN, Consumer, consumer

PROBLEM = "https://dlnuf.org/problems/"
ROOT = Path(__file__).resolve().parents[2]
PREFECTURE = "17690001700011"  # a préfecture (synthetic SIRET)
PROVIDER = "13002526500013"
TOKEN_ENV = "DLNUF_TEST_API_ENTREPRISE_TOKEN"
PURPOSE = "marches-publics"
COMPANY, HEAD_OFFICE, CLOSED = "912345675", "91234567500017", "91234567500025"
CONTEXT, OBJECT = "Marchés publics", "Marché 2026-127"
LEGAL_TITLE = "Code de la commande publique, article R2143-6"
LEGAL_URL = "https://www.legifrance.gouv.fr/codes/article_lc/LEGIARTI000037730503"
DATASETS = {
    "attestation_vigilance": ["entity_status", "date_fin_validite"],
    "etablissement": ["siret", "etat_administratif", "date_fermeture"],
    "unite_legale_diffusible": ["siren", "status_diffusion"],
    "association": ["nom", "active"],
    "effectifs_annuels": ["siren", "annee"],
}


def registry_text(prefecture: Consumer, sandbox_url: str) -> str:
    jwk = ", ".join(f'{k} = "{v}"' for k, v in prefecture.key.public_jwk().items() if k != "kid")
    parts = [f"""
[[organisations]]
siret = "{PROVIDER}"
name = "DINUM (API Entreprise)"
roles = ["provider"]

[[organisations]]
siret = "{PREFECTURE}"
name = "Préfecture du Rhône"
roles = ["consumer"]

[[organisations.keys]]
kid = "{prefecture.key.kid}"
jwk = {{ {jwk} }}

[[adapters]]
id = "api-entreprise"
provider = "{PROVIDER}"
kind = "api_entreprise"
datasets = {json.dumps(list(DATASETS))}
options = {{ base_url = "{sandbox_url}", token_env = "{TOKEN_ENV}", timeout = 1.0 }}

[[purposes]]
id = "{PURPOSE}"
label = "Instruire les candidatures à un marché public"
"""]
    for dataset, fields in DATASETS.items():
        parts.append(f"""
[[habilitations]]
id = "prefecture-{dataset}"
consumer = "{PREFECTURE}"
dataset = "{dataset}"
purposes = ["{PURPOSE}"]
fields = {json.dumps(fields)}
recipients = ["{PREFECTURE}"]
retention = "P5Y"
legal_basis = {{ type = "information", title = "{LEGAL_TITLE}", url = "{LEGAL_URL}" }}
""")
    return "".join(parts)


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN, slow_delay=3.0))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    prefecture = consumer(PREFECTURE)
    config = broker_config(tmp_path, database_url, registry_text(prefecture, sandbox))
    yield await start_broker(aiohttp_client, config, prefecture)


def body(dataset: str = "attestation_vigilance", subject: Any = None, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": dataset, "purpose": PURPOSE, "recipient": PREFECTURE,
                           "fields": DATASETS[dataset], "subject": subject or {"siren": COMPANY},
                           "context": CONTEXT, "object": OBJECT}
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


async def refused(broker: Harness, answer: Any, slug: str, status: int) -> Any:
    assert answer.status == status, answer.body
    assert answer.json["type"] == PROBLEM + slug and "data" not in answer.json
    row = (await broker.log_rows())[-1]
    assert row["problem_type"] == PROBLEM + slug and row["outcome"] in ("refused", "failed")
    return row


async def test_a_prefecture_gets_a_companys_attestation_signed_and_logged_with_its_call_context(
        broker: Harness) -> None:
    answer = await broker.exchange(body())
    assert answer.status == 200, answer.body
    await broker.verify(answer)
    data = answer.json["data"]
    assert set(data) == {"entity_status", "date_fin_validite"}
    assert data["entity_status"]["code"] == "ok"
    assert answer.json["data_sha256"] == hashlib.sha256(canonicalize(data)).hexdigest()
    [row] = await broker.log_rows()
    assert row["outcome"] == "released" and row["dataset"] == "attestation_vigilance"
    assert (row["call_context"], row["call_object"]) == (CONTEXT, OBJECT)
    # the company's journal key: the same keyed hash as any subject, so it can be told who accessed its data
    assert row["subject_key"] == subject_key(broker.app[STATE].subject_secret, Siren(COMPANY))


async def test_a_closed_establishment_and_an_association(broker: Harness) -> None:
    answer = await broker.exchange(body("etablissement", {"siret": CLOSED}))
    assert answer.status == 200, answer.body
    assert answer.json["data"]["etat_administratif"] == "F" and answer.json["data"]["date_fermeture"]
    answer = await broker.exchange(body("association", {"rna": "W751234567"}))
    assert answer.status == 200, answer.body
    assert answer.json["data"] == {"nom": "AMICALE DES JARDINS PARTAGÉS", "active": True}


async def test_without_its_call_context_api_entreprise_is_not_called(broker: Harness) -> None:
    row = await refused(broker, await broker.exchange(body(context=None, object=None)), "provider-rejected-query",
                        422)
    assert row["call_context"] is None and row["call_object"] is None


async def test_a_call_context_too_long_is_an_invalid_request(broker: Harness) -> None:
    await refused(broker, await broker.exchange(body(object="x" * 51)), "invalid-request", 400)
    await refused(broker, await broker.exchange(body(context=["Marchés publics"])), "invalid-request", 400)


async def test_the_headcount_of_the_year_asked_for(broker: Harness) -> None:
    answer = await broker.exchange(body("effectifs_annuels", parameters={"annee": 2022}))
    assert answer.status == 200, answer.body
    assert answer.json["data"] == {"siren": COMPANY, "annee": "2022"}
    assert json.loads((await broker.log_rows())[-1]["parameters"]) == {"annee": 2022}
    for malformed in ({"annee": "2022"}, {"annee": 22}, {"year": 2022}):
        answer = await broker.exchange(body("effectifs_annuels", parameters=malformed))
        await refused(broker, answer, "invalid-parameters", 400)
        assert answer.json["detail"].startswith("effectifs_annuels v1 parameters")


async def test_a_siret_with_a_wrong_check_digit_is_refused(broker: Harness) -> None:
    await refused(broker, await broker.exchange(body("etablissement", {"siret": "91234567500018"})),
                  "invalid-subject", 400)


async def test_a_business_dataset_asked_about_a_citizen_is_refused(broker: Harness) -> None:
    row = await refused(broker, await broker.exchange(body(subject=pivot("dupont-marie-claire"))),
                        "subject-kind-not-accepted", 400)
    assert row["subject_key"] is not None
    await refused(broker, await broker.exchange(body("etablissement", {"siren": COMPANY})),
                  "subject-kind-not-accepted", 400)


async def test_upstream_rate_limit_reaches_the_consumer_with_retry_after(broker: Harness) -> None:
    answer = await broker.exchange(body(subject={"siren": "900222332"}))
    await refused(broker, answer, "provider-rate-limited", 429)
    assert answer.headers["Retry-After"] == "30"
    assert "retry in 30 s" in answer.json["detail"]


async def test_upstream_timeout_and_non_disclosable(broker: Harness) -> None:
    await refused(broker, await broker.exchange(body(subject={"siren": "900333444"})), "provider-timeout", 504)
    await refused(broker, await broker.exchange(body("unite_legale_diffusible", {"siren": "823456785"})),
                  "subject-not-disclosable", 451)
    await refused(broker, await broker.exchange(body(subject={"siren": "799123450"})), "subject-not-found", 404)


async def test_the_request_the_demo_prints_for_the_prefecture_is_released(
        database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's own registry and printed command, run as a user would (a subprocess of `python -m broker`).
    monkeypatch.setenv(demo.ENTREPRISE_TOKEN_ENV, SANDBOX_TOKEN)
    keys = {name: generate_private_key("ed25519", kid=name) for name in ("paris", "lyon", "marseille", "rhone")}
    registry = tmp_path / "registry.toml"
    demo.write_registry(registry, keys["paris"], "http://127.0.0.1:9", "http://127.0.0.1:9",
                        cantine_key=keys["lyon"], cantine_url="http://127.0.0.1:9", periscolaire_key=keys["marseille"],
                        periscolaire_url="http://127.0.0.1:9", prefecture_key=keys["rhone"], entreprise_url=sandbox)
    prefecture = Consumer(demo.PREFECTURE_SIRET, keys["rhone"])
    broker = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, registry.read_text()),
                                prefecture)
    key_file = tmp_path / "prefecture.jwk"
    key_file.write_text(json.dumps(keys["rhone"].to_jwk()))
    command = demo.request_command(broker.url("/").rstrip("/"), key_file, dataset="attestation_vigilance",
                                   purpose="marches-publics", fields="entity_status,date_fin_validite",
                                   recipient=demo.PREFECTURE_SIRET, subject=demo.DEMO_COMPANY,
                                   context=(demo.DEMO_CONTEXT, demo.DEMO_OBJECT))
    args = shlex.split(command)
    assert args[:4] == [sys.executable, "-m", "broker", "request"]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env={**os.environ, "DLNUF_STATE_DIR": str(tmp_path / "state")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["data"]["entity_status"]["code"] == "ok"
    [row] = await broker.log_rows()
    assert (row["call_context"], row["call_object"]) == (demo.DEMO_CONTEXT, demo.DEMO_OBJECT)


async def test_a_company_is_told_who_accessed_its_data_through_the_journal_api(
        database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same journal API as a citizen's, asked by a trusted organisation (DLNUF_JOURNAL_CLIENTS) on the company's
    # behalf with the company's SIREN: the préfecture's access is there, another company's is not.
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    prefecture, portal = consumer(PREFECTURE), consumer("13001234700014")
    portal_jwk = ", ".join(f'{k} = "{v}"' for k, v in portal.key.public_jwk().items() if k != "kid")
    text = registry_text(prefecture, sandbox) + f"""
[[organisations]]
siret = "{portal.siret}"
name = "Portail des entreprises"
roles = ["consumer"]

[[organisations.keys]]
kid = "{portal.key.kid}"
jwk = {{ {portal_jwk} }}
"""
    config = broker_config(tmp_path, database_url, text, log_key_file=tmp_path / "log-note-key",
                           log_origin="dlnuf.test/log", log_interval=0.05, journal_clients=frozenset({portal.siret}))
    broker = await start_broker(aiohttp_client, config, prefecture)
    assert (await broker.exchange(body())).status == 200
    assert (await broker.exchange(body(subject={"siren": "888777661"}))).status == 200

    raw = json.dumps({"subject": {"siren": COMPANY}}).encode()
    answer = await broker.send(raw, broker.signed_headers(raw, path="/v1/journal", consumer=portal), path="/v1/journal")
    assert answer.status == 200, answer.body
    await broker.verify(answer)
    [entry] = answer.json["entries"]
    assert entry["entry"]["consumer"] == PREFECTURE and entry["consumer_name"] == "Préfecture du Rhône"
    assert entry["entry"]["dataset"] == "attestation_vigilance" and entry["entry"]["outcome"] == "released"
