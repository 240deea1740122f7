"""Builders for registry files and consumer keys used across tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from broker.signing.keys import PrivateKey, generate_private_key

CONSUMER = "21750001600019"  # Commune de Paris (consumer)
OTHER_CONSUMER = "21690123100011"  # Commune de Lyon (consumer)
PROVIDER = "13002526500013"  # DINUM, operating API Particulier (provider)
PURPOSE = "tarification-restauration-scolaire"
PURPOSE_LABEL = "Calculer le tarif de la cantine scolaire"
QF_FIELDS = ("quotient_familial", "allocataires", "enfants", "adresse")
SANDBOX_TOKEN = "sandbox-token-for-tests"
TOKEN_ENV = "DLNUF_TEST_API_PARTICULIER_TOKEN"
LEGAL_URL = "https://www.legifrance.gouv.fr/codes/article_lc/LEGIARTI000038611862"


@dataclass
class Consumer:
    siret: str
    key: PrivateKey


def consumer(siret: str = CONSUMER, alg: str = "ed25519", kid: str | None = None) -> Consumer:
    return Consumer(siret, generate_private_key(alg, kid=kid or f"{siret}-{alg}"))  # type: ignore[arg-type]


def _inline(jwk: dict[str, object]) -> str:
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in jwk.items() if k != "kid") + " }"


def registry_toml(
    consumers: list[Consumer],
    *,
    provider_url: str = "http://127.0.0.1:9/",
    fields: tuple[str, ...] = QF_FIELDS,
    basis: str = "information",
    extra_key_lines: str = "",
    timeout: float = 2.0,
    habilitation_extra: str = "",
    redirect_uri: str | None = None,
    bases: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    extra_datasets: Mapping[str, tuple[str, ...]] | None = None,
    purposes: Mapping[str, str] | None = None,
) -> str:
    """A registry with the API Particulier provider and one quotient_familial habilitation per consumer, on
    `basis`, or on `bases[siret]` for the consumers it names; consumers are called `names[siret]`, or "Commune
    <siret>". `extra_datasets` (dataset -> fields) adds datasets of the same provider, each with a habilitation per
    consumer on the same basis; `purposes` labels the purposes (by default PURPOSE; empty: no [[purposes]] table)."""
    parts = [f"""
[[organisations]]
siret = "{PROVIDER}"
name = "DINUM (API Particulier)"
roles = ["provider"]
"""]
    for c in consumers:
        parts.append(f"""
[[organisations]]
siret = "{c.siret}"
name = "{(names or {}).get(c.siret, f"Commune {c.siret}")}"
roles = ["consumer"]
{f'redirect_uris = ["{redirect_uri}"]' if redirect_uri else ""}

[[organisations.keys]]
kid = "{c.key.kid}"
jwk = {_inline(c.key.public_jwk())}
{extra_key_lines}
""")
    parts.append(f"""
[[adapters]]
id = "api-particulier"
provider = "{PROVIDER}"
kind = "api_particulier"
datasets = {json.dumps(["quotient_familial", *(extra_datasets or {})])}
options = {{ base_url = "{provider_url}", token_env = "{TOKEN_ENV}", timeout = {timeout} }}
""")
    for pid, label in ({PURPOSE: PURPOSE_LABEL} if purposes is None else purposes).items():
        parts.append(f"""
[[purposes]]
id = "{pid}"
label = "{label}"
""")
    field_line = "fields = [" + ", ".join(f'"{f}"' for f in fields) + "]" if fields else ""
    for c in consumers:
        parts.append(f"""
[[habilitations]]
id = "cantine-{c.siret}"
consumer = "{c.siret}"
dataset = "quotient_familial"
purposes = ["{PURPOSE}"]
{field_line}
recipients = ["{c.siret}", "{c.siret}/cantine"]
retention = "P1Y"
legal_basis = {{ type = "{(bases or {}).get(c.siret, basis)}", title = "CRPA, article L114-8", url = "{LEGAL_URL}" }}
{habilitation_extra}
""")
        for dataset, extra_fields in (extra_datasets or {}).items():
            parts.append(f"""
[[habilitations]]
id = "{dataset}-{c.siret}"
consumer = "{c.siret}"
dataset = "{dataset}"
purposes = ["{PURPOSE}"]
fields = {json.dumps(list(extra_fields))}
recipients = ["{c.siret}"]
retention = "P1Y"
legal_basis = {{ type = "{(bases or {}).get(c.siret, basis)}", title = "CRPA, article L114-8", url = "{LEGAL_URL}" }}
""")
    return "".join(parts)
