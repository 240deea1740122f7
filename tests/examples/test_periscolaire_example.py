"""The second sample démarche (examples/periscolaire), in Node.js with no dependency and no signature code, against a
real broker through the consumer gateway: « Remplir avec mes données » pre-fills its form with the parent's consent;
without consent the form stays empty. `make test` installs Node (with npm) where it is missing."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from pathlib import Path

import aiohttp

from tests.consent_harness import LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE
from tests.gateway.conftest import StartGateway, record_urls, start_gateway  # noqa: F401

SERVER = Path(__file__).resolve().parents[2] / "examples" / "periscolaire" / "server.mjs"


def _free_port() -> int:
    # Node binds it; it is chosen here so that the redirect URI can be registered first
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            assert proc.returncode is None, "the Node démarche exited"
            try:
                async with session.get(url + "/") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise AssertionError("the Node démarche did not start")


async def test_the_node_demarche_prefills_through_the_gateway(
        start_consent_stack: StartConsentStack, start_gateway: StartGateway) -> None:  # noqa: F811
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (make test installs it with npm)"
    base = f"http://127.0.0.1:{_free_port()}"
    stack = await start_consent_stack(redirect_uri=base + "/retour")
    gateway = await start_gateway(stack.broker, stack.lyon.key, siret=LYON)
    proc = await asyncio.create_subprocess_exec(
        node, str(SERVER), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={"PORT": base.rsplit(":", 1)[1], "BASE_URL": base, "BROKER_URL": stack.broker, "GATEWAY_URL": gateway.url,
             "SIRET": LYON, "PURPOSE": PURPOSE, "PATH": "/usr/bin:/bin"})
    try:
        await _wait(base, proc)
        async with stack.browser() as browser:
            async with browser.get(base + "/") as resp:
                assert 'name="quotient_familial" inputmode="numeric" value=""' in await resp.text()
            arrival = await stack.walk(browser, base + "/remplir", citizen="rousseau-jean-baptiste",
                                       stop_at=base + "/retour")
            async with browser.get(arrival.url) as resp:  # the démarche redeems through the gateway, then its form
                assert resp.status == 200 and str(resp.url) == base + "/"
                html = await resp.text()
            assert "pré-rempli" in html, html
            # Jean-Baptiste Rousseau's household in the sandbox: QF 1045, three children
            assert 'name="quotient_familial" inputmode="numeric" value="1045"' in html
            assert "<strong>2,70 €</strong>" in html
            assert len(re.findall(r'name="enfant_\d" value="[A-Z]+ ROUSSEAU"', html)) == 3

        async with stack.browser() as other:
            arrival = await stack.walk(other, base + "/remplir", decision="refuse", stop_at=base + "/retour")
            async with other.get(arrival.url) as resp:
                html = await resp.text()
            assert "Vous n&#39;avez pas autorisé le partage" in html
            assert 'name="quotient_familial" inputmode="numeric" value=""' in html
    finally:
        proc.terminate()
        await proc.wait()
    # every signed call went through the gateway, and it kept them
    calls = await gateway.records()
    assert [(c["kind"], c["outcome"]) for c in calls] == [("token", "released"), ("exchange", "released")]
