"""A replayed nonce never reaches a provider, whichever broker process it is sent to: two real processes
(`python -m broker serve` on two ports, one database, one public URL so that a request signed for one verifies
on the other) each receive the same signed request at the same moment; exactly one answers it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from broker.signing import messages
from tests.broker_harness import exchange_body
from tests.exchange.test_quotas import Provider, provider  # noqa: F401 - the fixture counting provider calls
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog_processes import ROOT, _free_port, _ready

REQUESTS = 12


async def test_a_nonce_is_answered_once_across_two_processes(database_url: str, provider: Provider,  # noqa: F811
                                                              tmp_path: Path) -> None:
    paris = consumer()
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([paris], provider_url=provider.url))
    ports = [_free_port(), _free_port()]
    public = f"http://127.0.0.1:{ports[0]}"
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: SANDBOX_TOKEN,
           "DLNUF_PUBLIC_URL": public}
    logs = [(tmp_path / f"broker-{port}.log").open("w") for port in ports]
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "serve", "--port", str(port),
                                                  stdout=log, stderr=log, cwd=ROOT, env=env)
             for port, log in zip(ports, logs, strict=True)]
    try:
        for port, proc in zip(ports, procs, strict=True):
            await _ready(f"http://127.0.0.1:{port}", proc)
        body = json.dumps(exchange_body()).encode()

        async def send(session: aiohttp.ClientSession, port: int, headers: CIMultiDict[str]) -> int:
            async with session.post(f"http://127.0.0.1:{port}/v1/exchanges", data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses: list[list[int]] = []
        async with aiohttp.ClientSession() as session:
            for _ in range(REQUESTS):
                headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
                headers.update(messages.sign_request(method="POST", url=f"{public}/v1/exchanges", headers=headers,
                                                     body=body, private_key=paris.key))
                statuses.append(sorted(await asyncio.gather(*(send(session, p, headers) for p in ports))))
        assert statuses == [[200, 401]] * REQUESTS  # one answer per nonce; the other is refused as a replay
        assert provider.calls == REQUESTS  # and the replay never reached the provider
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
        for log in logs:
            log.close()

