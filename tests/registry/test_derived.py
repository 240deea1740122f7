"""Derived answers: the consumer gets a yes/no or a bracket, never the raw value, and the log says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import schemas
from broker import registry
from broker.registry.derived import DerivedRule, DerivedRuleError, parse_rule
from tests.broker_harness import Harness, broker_config, exchange_body, pivot, start_broker
from tests.exchange.test_exchange import PROBLEM, sandbox  # noqa: F401 - the sandbox fixture
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml

QF = schemas.load("quotient_familial", 1)
DERIVED = """
[[habilitations.derived]]
name = "qf_inferieur_800"
source = "quotient_familial.valeur"
test = { op = "<=", value = 800 }
question = "Votre quotient familial est-il inférieur ou égal à 800 ?"

[[habilitations.derived]]
name = "tranche_qf"
source = "quotient_familial.valeur"
brackets = { bounds = [400, 800, 1200], labels = ["A", "B", "C", "D"] }
"""


@pytest.mark.parametrize(("value", "test", "tranche"),
                         [(0, True, "A"), (400, True, "A"), (401, True, "B"), (800, True, "B"), (801, False, "C"),
                          (1200, False, "C"), (5000, False, "D")])
def test_rules_compute(value: int, test: bool, tranche: str) -> None:
    doc = {"quotient_familial": {"valeur": value}}
    assert DerivedRule("t", "quotient_familial.valeur", op="<=", value=800).compute(doc) is test
    rule = DerivedRule("b", "quotient_familial.valeur", bounds=(400, 800, 1200), labels=("A", "B", "C", "D"))
    assert rule.compute(doc) == tranche
    assert rule.compute({"quotient_familial": {}}) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [({"name": "x", "source": "adresse", "test": {"op": "<=", "value": 1}}, "not a numeric field"),
     ({"name": "x", "source": "quotient_familial.valeur", "test": {"op": "~", "value": 1}}, "test.op"),
     ({"name": "x", "source": "quotient_familial.valeur"}, "exactly one"),
     ({"name": "x", "source": "quotient_familial.valeur", "brackets": {"bounds": [2, 1], "labels": ["a", "b", "c"]}},
      "strictly increasing"),
     ({"name": "x", "source": "quotient_familial.valeur", "brackets": {"bounds": [1], "labels": ["a"]}},
      "one more string"),
     ({"name": "X Y", "source": "quotient_familial.valeur", "test": {"op": "<", "value": 1}}, "name"),
     ({"name": "x", "source": "quotient_familial.valeur", "test": {"op": "<", "value": 1}, "question": " "},
      "question")],
)
def test_bad_rules_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(DerivedRuleError, match=message):
        parse_rule(raw, QF)


def test_bad_rule_in_registry_names_its_habilitation_line() -> None:
    text = registry_toml([consumer()], habilitation_extra=DERIVED.replace('"<="', '"~"'))
    with pytest.raises(registry.RegistryError, match=r"registry.toml:\d+: \[\[habilitations\]\] #1: derived: "):
        registry.parse_registry(text)


@pytest.fixture
async def derived_broker(database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path,  # noqa: F811
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris: Consumer = consumer()
    # only derived answers are granted: no raw field at all
    text = registry_toml([paris], provider_url=sandbox, fields=(), habilitation_extra=DERIVED)
    yield await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)


async def test_derived_answer_released_instead_of_the_raw_value(derived_broker: Harness) -> None:
    fields = ["derived.qf_inferieur_800", "derived.tranche_qf"]
    # in the sandbox, Marie Claire Dupont's household has a QF of 582, Jean-Baptiste Rousseau's 1045
    answer = await derived_broker.exchange(exchange_body(fields=fields))
    assert answer.status == 200, answer.body
    assert answer.json["data"] == {"derived": {"qf_inferieur_800": True, "tranche_qf": "B"}}
    # no value anywhere in the answer is the raw one (a substring test would trip on random salts and signatures)
    assert 582 not in _values(answer.json) and "582" not in _values(answer.json)
    rousseau = await derived_broker.exchange(exchange_body(pivot("rousseau-jean-baptiste"), fields=fields))
    assert rousseau.json["data"] == {"derived": {"qf_inferieur_800": False, "tranche_qf": "C"}}
    row, _ = await derived_broker.log_rows()
    assert list(row["fields_released"]) == ["derived.qf_inferieur_800", "derived.tranche_qf"]


async def test_raw_value_is_refused_when_only_derived_is_granted(derived_broker: Harness) -> None:
    answer = await derived_broker.exchange(exchange_body(fields=["quotient_familial.valeur"]))
    assert answer.status == 403
    assert answer.json["type"] == PROBLEM + "not-authorized"
    unknown = await derived_broker.exchange(exchange_body(fields=["derived.revenu_exact"]))
    assert unknown.status == 403


def _values(node: object) -> list[object]:
    if isinstance(node, dict):  # the latency is the broker's own measure, not a value of the citizen's record
        return [v for key, child in node.items() if key != "latency_us" for v in _values(child)]
    if isinstance(node, list):
        return [v for child in node for v in _values(child)]
    return [node]

async def test_the_question_a_derived_answer_answers_is_kept(database_url: str) -> None:
    from broker.storage import db

    conn = await db.connect(database_url)
    try:
        await registry.apply(conn, registry.parse_registry(registry_toml([consumer()], habilitation_extra=DERIVED)))
        [hab] = (await registry.load(conn)).habilitations
    finally:
        await conn.close()
    rule = hab.derived_rule("derived.qf_inferieur_800")
    assert rule is not None and rule.question == "Votre quotient familial est-il inférieur ou égal à 800 ?"
    tranche = hab.derived_rule("derived.tranche_qf")
    assert tranche is not None and tranche.question is None
