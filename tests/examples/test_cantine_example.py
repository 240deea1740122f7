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
from tests.adapters.test_franceconnect_sandbox import parse_forms
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
            [form] = [f for f in parse_forms(empty) if f.action == "/inscription"]
            assert form.fields["quotient_familial"] == "" and "Pré-rempli" not in empty

            html = await _go(stack, browser, base, "accept")
            assert "pré-rempli" in html
            [form] = [f for f in parse_forms(html) if f.action == "/inscription"]
            # Jean-Baptiste Rousseau's household in the sandbox: QF 1045, three children
            assert form.fields["quotient_familial"] == "1045"
            assert "Tranche <strong>E</strong>" in html
            children = [v for k, v in form.fields.items() if re.fullmatch(r"enfant_\d", k)]
            assert len(children) == 3 and all(v.endswith(" ROUSSEAU") for v in children)
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", form.fields["naissance_1"])  # a date input, still editable
            assert form.fields["nom"] == "ROUSSEAU"
            # next to each pre-filled value, where it comes from, by the schema's title: never a key
            assert "« Valeur du quotient familial », transmis avec votre accord le " in html
            assert "source : Caisse d&#39;allocations familiales (CAF). Vous pouvez la corriger." in html
            assert "« Nom de naissance », transmis avec votre accord" in html
            assert html.count(">Pré-rempli<") == len([v for v in form.fields.values() if v])
            for key in ("nom_naissance", "code_postal_ville\u00bb", "numero_libelle_voie", "date_naissance"):
                assert key not in html

            # she corrects one value and keeps the others: the summary says which is which, by the form's labels
            sent = {**form.fields, "quotient_familial": "1000"}
            async with browser.post(base + "/inscription", data=sent) as resp:
                done = await resp.text()
            assert "Inscription envoyée" in done and "tranche <strong>E</strong>, <strong>3,62 €</strong>" in done
            assert "Enfant 1 : prénoms et nom" in done and "Code postal et commune" in done
            assert done.count("Corrigé par vous") == 1 and done.count("Transmis par la CAF ou la MSA") >= 5
            for key in ("quotient_familial", "code_postal_ville", "enfant_1", "naissance_1"):
                assert f">{key}<" not in done

        async with stack.browser() as other:
            html = await _go(stack, other, base, "refuse")
            assert "Vous n&#39;avez pas autorisé le partage" in html
            [form] = [f for f in parse_forms(html) if f.action == "/inscription"]
            assert form.fields["quotient_familial"] == ""  # empty, usable by hand
            async with other.post(base + "/inscription", data={"nom": "Rousseau", "quotient_familial": "1045"}) as r:
                page = await r.text()
                assert r.status == 200 and "Inscription envoyée" in page and "Corrigé par vous" not in page
    finally:
        await runner.cleanup()
