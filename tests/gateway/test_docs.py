"""The gateway's docs cannot rot: every setting it reads is in the README and docs/gateway.md, and the curl example of
docs/gateway.md, sent as written to a gateway in front of a broker on the demo registry, is released."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from broker.cli import demo
from broker.signing.keys import generate_private_key
from tests.broker_harness import broker_config, start_broker
from tests.factories import Consumer
from tests.gateway.conftest import StartGateway

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "gateway.md").read_text("utf-8")
README = (ROOT / "README.md").read_text("utf-8")


def test_every_setting_is_documented() -> None:
    read = set(re.findall(r'"(DLNUF_GATEWAY_[A-Z_]+)"', (ROOT / "broker" / "gateway" / "config.py").read_text()))
    assert len(read) >= 15
    for name in read:
        assert f"`{name}`" in DOC, f"{name} is not in docs/gateway.md"
        assert name in README, f"{name} is not in the README"


def _curl_example() -> tuple[str, dict[str, Any]]:
    block = re.search(r"## An exchange, with curl.*?```sh\n(.*?)```", DOC, re.DOTALL)
    assert block is not None, "docs/gateway.md lost its curl example"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    return words[words.index("-si") + 1], json.loads(words[words.index("-d") + 1])


async def test_the_curl_example_is_released(database_url: str, aiohttp_client: Any, aiohttp_server: Any,
                                            start_gateway: StartGateway, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.sandbox.api_particulier import create_app as sandbox_app

    url, body = _curl_example()
    assert url == "http://127.0.0.1:8090/v1/exchanges"  # the gateway's default address
    monkeypatch.setenv(demo.TOKEN_ENV, "sandbox")
    sandbox = await aiohttp_server(sandbox_app("sandbox"))
    keys = {name: generate_private_key("ed25519", kid=name) for name in ("paris", "lyon", "marseille")}
    registry = tmp_path / "registry.toml"
    demo.write_registry(registry, keys["paris"], str(sandbox.make_url("")).rstrip("/"), "http://127.0.0.1:9",
                        cantine_key=keys["lyon"], cantine_url="http://127.0.0.1:9",
                        periscolaire_key=keys["marseille"], periscolaire_url="http://127.0.0.1:9")
    marseille = Consumer(demo.PERISCOLAIRE_SIRET, keys["marseille"])
    broker = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, registry.read_text()),
                                marseille)
    gateway = await start_gateway(broker.url("/").rstrip("/"), marseille.key, siret=demo.PERISCOLAIRE_SIRET)
    answer = await gateway.exchange(body)
    assert answer.status == 200, answer.body
    assert answer.json["data"] == {"est_beneficiaire": True}
    assert answer.headers["DLNUF-Inclusion-Promise"] == "verified"
