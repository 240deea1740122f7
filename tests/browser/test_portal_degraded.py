"""The portal without JavaScript and without the DSFR: everything but the in-browser verification still works,
forms, links and downloads; and the journal's filters, with the exports that follow them."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import datetime, timedelta
from pathlib import Path

from playwright.async_api import Page, Route, expect

from broker.citizen.portal.common import PARIS
from tests.broker_harness import pivot
from tests.browser.citizen import (
    PROBLEM,
    AssertAccessible,
    Demarche,
    OpenPage,
    consent_in_browser,
    integrate,
    login,
    lyon_exchange,
    paris_exchange,
    refused,
)
from tests.consent_harness import LYON, ConsentStack
from tests.factories import PURPOSE


async def downloaded_csv(page: Page) -> list[dict[str, str]]:
    async with page.expect_download() as info:
        await page.get_by_role("link", name=re.compile("pour un tableur")).click()
    path: Path = await (await info.value).path()
    return list(csv.DictReader(io.StringIO(await asyncio.to_thread(path.read_text, "utf-8-sig")), delimiter=";"))


async def test_without_javascript_nor_design_system(stack: ConsentStack, demarche: Demarche,
                                                    open_page: OpenPage) -> None:
    tab = await open_page(java_script_enabled=False)
    page = tab.page
    blocked: list[str] = []

    async def no_dsfr(route: Route) -> None:
        blocked.append(route.request.url)
        await route.abort()

    await page.route(re.compile(r".*/static/dsfr/.*"), no_dsfr)
    token = await consent_in_browser(page, stack, demarche)  # the consent screen is a plain form
    await lyon_exchange(stack, token)
    await paris_exchange(stack)
    await integrate(stack)
    assert blocked, "the pages did ask for the DSFR stylesheet"

    await page.goto(stack.broker + "/citizen/journal")
    await expect(page.locator("ol.journal > li")).to_have_count(3)
    # no script: no "Vérifier" button that would do nothing, and a word on why
    await expect(page.locator("button[data-verify]").first).to_be_hidden()
    await expect(page.get_by_text("Sans JavaScript, téléchargez le journal au format JSON")).to_be_visible()
    assert len(await downloaded_csv(page)) == 3

    # revocation through its confirmation page, and an objection: plain forms
    await page.get_by_role("link", name="Mes consentements").click()
    await page.get_by_role("link", name=re.compile("Retirer ce consentement")).click()
    await page.get_by_role("button", name="Oui, retirer mon consentement").click()
    await expect(page.get_by_role("heading", name="Consentement retiré")).to_be_visible()
    assert await refused(lyon_exchange(stack, token)) == PROBLEM + "legal-basis-refused"
    await page.get_by_role("link", name="Mes oppositions").click()
    await page.get_by_role("button", name=re.compile("M'opposer")).click()
    await expect(page.get_by_text("Votre opposition est enregistrée")).to_be_visible()
    assert await refused(paris_exchange(stack)) == PROBLEM + "legal-basis-refused"
    await page.screenshot(path=Path("test-artifacts") / "portal-without-js-and-dsfr.png", full_page=True)

    await page.get_by_role("button", name="Se déconnecter").click()
    await page.wait_for_url(stack.broker + "/citizen/logged-out**")


async def test_journal_filters_and_the_exports_follow_them(stack: ConsentStack, open_page: OpenPage,
                                                           assert_accessible: AssertAccessible) -> None:
    await paris_exchange(stack)
    # Lyon asks without her consent: refused, and logged as an access to her data all the same
    async with stack.client(stack.lyon) as lyon:
        assert await refused(lyon.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                           fields=["quotient_familial"],
                                           subject=pivot("dupont-marie-claire"))) == PROBLEM + "legal-basis-refused"
    await integrate(stack)
    page = (await open_page()).page
    await login(page, stack, path="/citizen/journal")
    rows = page.locator("ol.journal > li")
    await expect(rows).to_have_count(2)
    today = datetime.now(PARIS).date()

    async def apply(**fields: str) -> None:
        for name in ("du", "au"):
            await page.fill(f"#{name}", fields.get(name, ""))
        await page.select_option("#administration", label=fields.get("administration", "Toutes"))
        await page.select_option("#donnees", value=fields.get("donnees", ""))
        await page.get_by_role("button", name="Filtrer").click()
        await page.wait_for_load_state()

    await apply(administration="Ville de Paris")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("Ville de Paris")
    assert [r["SIRET de l'administration"] for r in await downloaded_csv(page)] == ["21750001600019"]

    await apply(administration="Ville de Lyon", donnees="quotient_familial")
    await expect(rows).to_have_count(1)
    [lyon_row] = await downloaded_csv(page)
    assert (lyon_row["SIRET de l'administration"], lyon_row["Type"]) == (LYON, "Refusé")

    await apply(du=today.isoformat(), au=today.isoformat())
    await expect(rows).to_have_count(2)
    assert len(await downloaded_csv(page)) == 2
    await apply(du=(today + timedelta(days=1)).isoformat())
    await expect(page.get_by_text("Aucun accès à vos données n'est enregistré pour ces critères.")).to_be_visible()
    assert await downloaded_csv(page) == []

    # a period that ends before it starts is pointed out, and not applied
    await apply(du=today.isoformat(), au=(today - timedelta(days=1)).isoformat())
    await expect(page.locator("#au-erreur")).to_have_text("La fin de la période doit suivre son début.")
    await expect(page.locator("#au")).to_have_attribute("aria-invalid", "true")
    await expect(rows).to_have_count(2)
    await assert_accessible(page, "journal, filter error")
