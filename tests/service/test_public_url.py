"""DLNUF_PUBLIC_URL is required to serve (issue 13: without it the signed authority came from the Host header, so
a request signed for another deployment sharing consumer keys was accepted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.app import create_app
from broker.config import ConfigError, load_config
from broker.signing import messages
from tests.broker_harness import EXCHANGES, broker_config, exchange_body, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

PUBLIC = "https://dlnuf.example.gouv.fr"


def test_the_broker_refuses_to_serve_without_a_public_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DLNUF_PUBLIC_URL is required"):
        create_app(load_config(env={}, database_url="postgresql://unused/x", state_dir=tmp_path))
    create_app(load_config(env={"DLNUF_PUBLIC_URL": PUBLIC}, database_url="postgresql://unused/x",
                           state_dir=tmp_path))


async def test_only_requests_signed_for_the_public_url_verify(database_url: str, aiohttp_client: Any,
                                                              aiohttp_server: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    paris = consumer()
    config = broker_config(tmp_path, database_url,
                           registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/")),
                           public_url=PUBLIC, host_from_request=False)
    broker = await start_broker(aiohttp_client, config, paris)
    raw = json.dumps(exchange_body()).encode()

    def signed_for(url: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        headers.update(messages.sign_request(method="POST", url=url, headers=headers, body=raw,
                                             private_key=paris.key))
        return headers

    # reached through a proxy: the Host is the broker's own address, the consumer signed the public URL
    assert (await broker.send(raw, signed_for(PUBLIC + EXCHANGES))).status == 200
    # signed for the address this request reached (another deployment's, say): its Host does not count
    assert (await broker.send(raw, signed_for(broker.url()))).status == 401
    assert (await broker.send(raw, signed_for("https://other-deployment.example" + EXCHANGES))).status == 401
    [attempt, other] = (await broker.attempt_rows())
    assert attempt["reason"] == other["reason"] == "bad-signature"
