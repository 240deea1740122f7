"""What the browser tests share: a consumer's démarche that receives the citizen back from the consent flow, the
citizen's steps in Chromium (login at the sandbox OP, verification of a journal entry), and the consumer's side
through `broker.client.BrokerClient`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, expect

from broker.consumer.client import BrokerProblem, ExchangeAnswer
from broker.tlog.log import TLOG
from tests.broker_harness import pivot
from tests.consent_harness import LYON, PARIS, ConsentStack
from tests.factories import PURPOSE

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
UPDATE_DOCS = os.environ.get("DLNUF_UPDATE_DOCS") == "1"
"""`make screenshots`: the documentation's screenshots are copied from the tests' into docs/."""
PROBLEM = "https://dlnuf.org/problems/"
NAMES = {LYON: "Ville de Lyon", PARIS: "Ville de Paris"}
MARIE = "dupont-marie-claire"
JEAN = "rousseau-jean-baptiste"
IN_LOG = "Vérifiée : cette entrée figure dans le journal public."
NOT_IN_LOG = "Échec : cette entrée n'est pas prouvée dans le journal public."


@dataclass
class Demarche:
    """The consumer's web service the broker sends the citizen back to: it only notes the query it got."""

    url: str
    arrivals: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Tab:
    """A page of one browser context, with the CSP violations and console errors the browser reported there."""

    page: Page
    context: BrowserContext
    csp_violations: list[str] = field(default_factory=list)


OpenPage = Callable[..., Awaitable[Tab]]


AssertAccessible = Callable[[Page, str], Awaitable[None]]
"""`assert_accessible(page, name)`: axe-core finds no serious or critical violation on the page."""


async def screenshot(page: Page, name: str, *, docs: bool = False) -> Path:
    """A screenshot into test-artifacts/, to look at; with `docs`, also into docs/ when DLNUF_UPDATE_DOCS=1."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=path, full_page=True)
    if docs and UPDATE_DOCS:
        shutil.copyfile(path, DOCS / name)
    return path


async def pick_at_op(page: Page, stack: ConsentStack, citizen: str) -> None:
    """At the sandbox FranceConnect picker: choose who to be, and log in."""
    await page.wait_for_url(re.compile(re.escape(stack.issuer) + r"/authorize\?"))
    await page.check(f"#citoyen-{citizen}")
    await page.click("button[name=decision][value=accept]")


async def login(page: Page, stack: ConsentStack, citizen: str = MARIE, path: str = "/citizen/") -> None:
    """Open a portal page: the broker sends the browser to the OP, the citizen picks themselves, and comes back."""
    await page.goto(stack.broker + path)
    await pick_at_op(page, stack, citizen)
    await page.wait_for_url(stack.broker + path)


async def consent_in_browser(page: Page, stack: ConsentStack, demarche: Demarche, *, citizen: str = MARIE,
                             on_screen: Callable[[Page], Awaitable[None]] | None = None) -> str:
    """Lyon's démarche sends the citizen to the consent screen (`on_screen` looks at it), where they accept;
    returns Lyon's access token. The citizen logs in on the way if they are not yet."""
    async with stack.client(stack.lyon) as lyon:
        auth = lyon.authorization_request(redirect_uri=demarche.url, dataset="quotient_familial", purpose=PURPOSE,
                                          fields=["quotient_familial", "enfants", "adresse"], frequency="periodic",
                                          duration_days=30)
        await page.goto(auth.url)
        if page.url.startswith(stack.issuer):
            await pick_at_op(page, stack, citizen)
        await page.wait_for_url(re.compile(r".*/oauth/consent/"))
        if on_screen is not None:
            await on_screen(page)
        await page.click("button[name=decision][value=accept]")
        await page.wait_for_url(re.compile(re.escape(demarche.url) + r"\?"))
        arrival = demarche.arrivals[-1]
        token = await lyon.exchange_code(code=arrival["code"], code_verifier=auth.code_verifier,
                                         redirect_uri=demarche.url)
    return token.access_token


async def lyon_exchange(stack: ConsentStack, access_token: str) -> ExchangeAnswer:
    async with stack.client(stack.lyon) as lyon:
        return await lyon.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                   fields=["quotient_familial"], access_token=access_token)


async def paris_exchange(stack: ConsentStack, citizen: str = MARIE) -> ExchangeAnswer:
    """A proactive exchange of Paris about the citizen, who gave nothing and is only told afterwards."""
    async with stack.client(stack.paris) as paris:
        return await paris.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=PARIS,
                                    fields=["quotient_familial"], subject=pivot(citizen))


async def refused(exchange: Any) -> str:
    """The problem type of an exchange the broker refuses."""
    with pytest.raises(BrokerProblem) as problem:
        await exchange
    return problem.value.type


async def integrate(stack: ConsentStack) -> None:
    """Sequence every committed access-log row into the public log now, rather than waiting for the integrator.
    A round of the broker's own integrator may hold the log (a drain then does nothing): wait for it to commit."""
    while True:
        await stack.app[TLOG].drain()
        if not await stack.sql("SELECT 1 FROM tlog_queue LIMIT 1"):
            return
        await asyncio.sleep(0.05)


async def verify_row(page: Page, row: int) -> str:
    """Click "Vérifier" on the journal's `row` (1 is the newest) and return what the page then says: the verdict,
    then what is behind its disclosure."""
    await page.locator(f"ol.journal > li:nth-child({row}) button[data-verify]").click()
    result = page.locator(f"#verif-{row}")
    await expect(result).to_have_class(re.compile(r"verify-(ok|ko)"))
    detail = await page.locator(f"#verif-{row}-details [data-verify-detail]").text_content() or ""
    return ((await result.inner_text()).strip() + "\n" + detail.strip()).strip()
