"""`registry apply` refuses an invalid declarative (`http_json`) adapter entry, naming its line and the bad option."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import PIPE

import asyncpg
import pytest

from adapters import api_entreprise, http_json
from adapters import registry as adapter_registry
from broker import registry
from broker.cli import demo
from broker.signing.keys import generate_private_key
from tests.factories import consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
DGFIP = "11002001300097"

# A second provider and its adapter, as an operator appends them to a working registry (docs/adapters.md).
HTTP_JSON_ENTRY = f"""
[[organisations]]
siret = "{DGFIP}"
name = "DGFiP (sandbox)"
roles = ["provider"]

[[adapters]]
id = "dgfip"
provider = "{DGFIP}"
kind = "http_json"
datasets = ["revenu_fiscal_reference"]

[adapters.options]
base_url = "https://impots.example/api"
token_env = "DLNUF_DGFIP_KEY"
auth_header = "X-Api-Key"
timeout = 3
retries = 1

[adapters.options.endpoints.revenu_fiscal_reference]
pivot = {{ path = "/v1/revenu-fiscal", query = {{ nomNaissance = "family_name", prenoms = "given_name", dateNaissance = "birthdate", sexe = "sex", codeLieuNaissance = "birthplace_or_country" }} }}
identifiers = {{ spi = {{ path = "/v1/revenu-fiscal/spi/{{identifier}}" }} }}
statuses = {{ "409" = "ambiguous" }}

[adapters.options.endpoints.revenu_fiscal_reference.fields]
annee_revenus = "/anneeRevenus"
revenu_fiscal_reference = "/revenuFiscalReference"
nombre_parts = "/nombreParts"
situation_famille = {{ pointer = "/situationFamille", values = {{ C = "celibataire", M = "marie" }} }}
"""  # noqa: E501


def registry_text(change: Callable[[str], str] = lambda t: t) -> str:
    return registry_toml([consumer()]) + change(HTTP_JSON_ENTRY)


def adapter_line(text: str) -> int:
    """Line of the http_json entry's `[[adapters]]` header (the second one in the file)."""
    headers = [i for i, line in enumerate(text.splitlines(), 1) if line.strip() == "[[adapters]]"]
    return headers[1]


def test_the_valid_entry_parses() -> None:
    reg = registry.parse_registry(registry_text())
    entry = reg.adapter_for("revenu_fiscal_reference")
    assert entry is not None and entry.kind == "http_json" and entry.options["retries"] == 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace('annee_revenus = "/anneeRevenus"', 'annee_revenus = "anneeRevenus"'),
     "endpoints.revenu_fiscal_reference.fields.annee_revenus.pointer: must be a JSON pointer"),
    (lambda t: t.replace('sexe = "sex"', 'sexe = "shoe_size"'),
     "endpoints.revenu_fiscal_reference.pivot.query.sexe: unknown source 'shoe_size'"),
    (lambda t: t.replace('nombre_parts = "/nombreParts"', 'pointure = "/pointure"'),
     "endpoints.revenu_fiscal_reference.fields.pointure: not a member of revenu_fiscal_reference v1"),
    (lambda t: t.replace('"409" = "ambiguous"', '"409" = "shrug"'),
     "endpoints.revenu_fiscal_reference.statuses.409: outcome must be one of"),
    (lambda t: t.replace('{ path = "/v1/revenu-fiscal/spi/{identifier}" }', '{ path = "/v1/{spi}" }'),
     "endpoints.revenu_fiscal_reference.identifiers.spi.path: the only placeholder is {identifier}"),
    (lambda t: t.replace("[adapters.options.endpoints.revenu_fiscal_reference]",
                         "[adapters.options.endpoints.quotient_familial]"),
     "endpoints.quotient_familial: every served dataset needs exactly one endpoint entry"),
    (lambda t: t.replace('base_url = "https://impots.example/api"', 'base_url = "impots.example"'),
     "base_url: 'impots.example' is not an http(s) URL with a host"),
    (lambda t: t.replace('token_env = "DLNUF_DGFIP_KEY"', 'token = "s3cret"'), "token: secrets never live in"),
    (lambda t: t.replace('auth_header = "X-Api-Key"', 'auth_header = "X Api Key"'), "auth_header: must be an"),
    (lambda t: t.replace("retries = 1", "retries = 9"), "retries: must be an integer from 0 to 5"),
    (lambda t: t.replace("retries = 1", "breaker_cooldown = -1"), "breaker_cooldown: must be a number"),
    (lambda t: t.replace("retries = 1", "verb = \"POST\""), "verb: unknown option for kind 'http_json'"),
    # mutual TLS: files are read at apply time, and only for an https provider
    (lambda t: t.replace("retries = 1", 'client_cert_file = "/nonexistent/dgfip.pem"\n'
                                        'client_key_file = "/nonexistent/dgfip.key"'),
     "client_cert_file: cannot read /nonexistent/dgfip.pem: No such file or directory"),
    (lambda t: t.replace("retries = 1", 'client_cert_file = "/nonexistent/dgfip.pem"'),
     "client_key_file: required with client_cert_file"),
    (lambda t: t.replace("retries = 1", 'ca_file = "certs/dgfip-ca.pem"'), "ca_file: must be an absolute file path"),
    (lambda t: t.replace("https://impots.example", "http://impots.example").replace(
        "retries = 1", 'ca_file = "/nonexistent/dgfip-ca.pem"'),
     "ca_file: client certificates and a provider CA need an https base_url"),
    # POST lookups
    (lambda t: t.replace('pivot = { path = "/v1/revenu-fiscal",',
                         'pivot = { method = "PUT", path = "/v1/revenu-fiscal",'),
     "endpoints.revenu_fiscal_reference.pivot.method: must be GET or POST"),
    (lambda t: t.replace('pivot = { path = "/v1/revenu-fiscal", query',
                         'pivot = { method = "POST", path = "/v1/revenu-fiscal", body'),
     "retries: endpoints.revenu_fiscal_reference.pivot is a POST without idempotent = true"),
    (lambda t: t.replace('pivot = { path = "/v1/revenu-fiscal", query = { nomNaissance = "family_name"',
                         'pivot = { method = "POST", idempotent = true, path = "/v1/revenu-fiscal", '
                         'body = { nom.naissance = "birth_name"'),
     "endpoints.revenu_fiscal_reference.pivot.body.nom.naissance: unknown source 'birth_name'"),
])
def test_invalid_http_json_entry_is_refused_naming_its_line(change: Callable[[str], str], message: str) -> None:
    text = registry_text(change)
    with pytest.raises(registry.RegistryError) as info:
        registry.parse_registry(text, "registry.toml")
    assert str(info.value).startswith(f"registry.toml:{adapter_line(text)}: [[adapters]] #2: adapter 'dgfip': ")
    assert message in str(info.value)


async def test_registry_apply_command_refuses_it_and_changes_nothing(database_url: str, tmp_path: Path) -> None:
    text = registry_text(lambda t: t.replace('annee_revenus = "/anneeRevenus"', 'annee_revenus = "anneeRevenus"'))
    file = tmp_path / "registry.toml"
    file.write_text(text)
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "registry", "apply", str(file),
                                                env=env, cwd=ROOT, stdout=PIPE, stderr=PIPE)
    _, err = await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 2, stderr
    assert f"error: {file}:{adapter_line(text)}: [[adapters]] #2: adapter 'dgfip': " in stderr
    assert "fields.annee_revenus.pointer" in stderr
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM adapters") == 0
    finally:
        await conn.close()


def test_demo_registry_is_valid_with_both_providers(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    key = generate_private_key("ed25519", kid="demo-commune-paris")
    cantine = generate_private_key("ed25519", kid="demo-ville-lyon-cantine")
    periscolaire = generate_private_key("ed25519", kid="demo-ville-marseille-periscolaire")
    prefecture = generate_private_key("ed25519", kid="demo-prefecture-rhone")
    demo.write_registry(path, key, "http://127.0.0.1:1", "http://127.0.0.1:2", cantine_key=cantine,
                        cantine_url="http://127.0.0.1:3", periscolaire_key=periscolaire,
                        periscolaire_url="http://127.0.0.1:4", prefecture_key=prefecture,
                        entreprise_url="http://127.0.0.1:5")
    reg = registry.parse_registry(path.read_text(), str(path))
    assert {a.kind for a in reg.adapters} == {"api_particulier", "http_json", "api_entreprise"}
    # the préfecture, for every business dataset API Entreprise serves, and the request the demo prints
    assert {h.dataset for h in reg.habilitations if h.consumer == demo.PREFECTURE_SIRET} == \
        set(api_entreprise.SUPPORTED_DATASETS)
    assert reg.habilitation(demo.PREFECTURE_SIRET, "attestation_vigilance") is not None
    assert reg.habilitation(demo.CONSUMER_SIRET, "revenu_fiscal_reference") is not None
    # issue 11's new API Particulier datasets, habilitated for the commune
    assert reg.habilitation(demo.CONSUMER_SIRET, "allocation_adulte_handicape") is not None
    assert reg.habilitation(demo.CONSUMER_SIRET, "allocation_soutien_familial") is not None
    # the sample démarche's consent-based habilitation and its exact redirect URI
    lyon = reg.habilitation(demo.CANTINE_SIRET, "quotient_familial")
    assert lyon is not None and lyon.legal_basis.type == "consent"
    org = reg.organisation(demo.CANTINE_SIRET)
    assert org is not None and org.redirect_uris == ("http://127.0.0.1:3/retour",)
    # the Node démarche's, whose key only the gateway holds
    marseille = reg.habilitation(demo.PERISCOLAIRE_SIRET, "quotient_familial")
    assert marseille is not None and marseille.purposes == ("tarification-accueil-periscolaire",)
    org = reg.organisation(demo.PERISCOLAIRE_SIRET)
    assert org is not None and org.redirect_uris == ("http://127.0.0.1:4/retour",)
    # citizens read every purpose of the demo by its label
    assert all(reg.purpose(p) is not None for h in reg.habilitations for p in h.purposes)


# ------------------------------------------------------------------------------------------ docs/adapters.md

DOC = (ROOT / "docs" / "adapters.md").read_text("utf-8")


def _doc_table_keys(heading: str) -> set[str]:
    """The backquoted first cells of the table under `heading` in docs/adapters.md."""
    lines = DOC.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return set(re.findall(r"^\| `([^`]+)` \|", "\n".join(lines[start:end]), re.MULTILINE))


def test_the_documented_worked_example_is_a_valid_registry() -> None:
    block = re.search(r"<!-- worked example: registry.toml[^>]*-->\n```toml\n(.*?)```", DOC, re.DOTALL)
    assert block is not None
    reg = registry.parse_registry(block.group(1), "registry.toml")
    entry = reg.adapter_for("revenu_fiscal_reference")
    assert entry is not None and entry.kind == "http_json"
    # the error the page shows is the one the code gives for the mistake it describes
    bad = block.group(1).replace('annee_revenus = "/anneeRevenus"', 'annee_revenus = "anneeRevenus"')
    with pytest.raises(registry.RegistryError) as info:
        registry.parse_registry(bad, "registry.toml")
    assert f"error: {info.value}\n" in DOC


def test_every_option_source_and_outcome_is_documented() -> None:
    kind = adapter_registry.KINDS["http_json"]
    assert _doc_table_keys("### `options`") == (kind.required | kind.optional) - {"datasets"}
    assert _doc_table_keys("**Sources**") == set(http_json.PIVOT_SOURCES)
    assert _doc_table_keys("**Statuses**") == set(http_json.OUTCOMES)
