"""The sample démarche (examples/cantine) against a real broker: « Remplir avec mes données » pre-fills the form
with identity, address, children and the quotient familial, and the price bracket computed from it; without
consent the form stays empty and usable by hand."""

from __future__ import annotations

import re
import socket

import aiohttp
import pytest
from aiohttp import web

from examples.cantine.app import create_app, price_bracket
from tests.consent_harness import LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401


@pytest.mark.parametrize(("qf", "bracket"), [(0, "A"), (234, "A"), (235, "B"), (582, "D"), (1045, "E"), (5000, "G")])
def test_price_bracket(qf: int, bracket: str) -> None:
    result = price_bracket(qf)
    assert result is not None and result["tranche"] == bracket
    assert price_bracket(None) is None


async def _demarche(stack: ConsentStack, sock: socket.socket) -> web.AppRunner:
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    runner = web.AppRunner(create_app(broker_url=stack.broker, key=stack.lyon.key, siret=LYON, base_url=url))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


async def _go(stack: ConsentStack, browser: aiohttp.ClientSession, base: str, decision: str) -> str:
    arrival = await stack.walk(browser, base + "/remplir", decision=decision, citizen="rousseau-jean-baptiste",
                               stop_at=base + "/retour")
    async with browser.get(arrival.url) as resp:  # back at the démarche, which redeems and redirects to its form
        assert resp.status == 200 and str(resp.url) == base + "/"
        return await resp.text()


async def test_prefilled_with_consent_and_empty_without(start_consent_stack: StartConsentStack) -> None:  # noqa: F811
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stack = await start_consent_stack(redirect_uri=base + "/retour")
    runner = await _demarche(stack, sock)
    try:
        async with stack.browser() as browser:
            async with browser.get(base + "/") as resp:
                empty = await resp.text()
            assert "Remplir avec mes données" in empty
            assert 'name="quotient_familial" inputmode="numeric" value=""' in empty

            html = await _go(stack, browser, base, "accept")
            assert "pré-rempli" in html
            # Jean-Baptiste Rousseau's household in the sandbox: QF 1045, three children
            assert re.search(r'name="quotient_familial" inputmode="numeric" value="1045"', html)
            assert "Tranche <strong>E</strong>" in html
            assert len(re.findall(r'name="enfant_\d" value="[A-Z]+ ROUSSEAU"', html)) == 3
            assert 'value="ROUSSEAU"' in html  # the allocataire's name

        async with stack.browser() as other:
            html = await _go(stack, other, base, "refuse")
            assert "Vous n&#39;avez pas autorisé le partage" in html
            assert 'name="quotient_familial" inputmode="numeric" value=""' in html  # empty, usable by hand
            async with other.post(base + "/inscription", data={"nom": "Rousseau", "quotient_familial": "1045"}) as r:
                assert r.status == 200 and "Inscription envoyée" in await r.text()
    finally:
        await runner.cleanup()
