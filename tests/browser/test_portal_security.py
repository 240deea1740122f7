"""The portal's guards, in the browser: one citizen never sees nor touches another's data, the session cookie's
attributes, CSRF on every change, and an expired session that changes nothing."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import Page, expect

from tests.browser.citizen import (
    JEAN,
    MARIE,
    AssertAccessible,
    Demarche,
    OpenPage,
    consent_in_browser,
    integrate,
    login,
    lyon_exchange,
    paris_exchange,
)
from tests.consent_harness import ConsentStack

POST_FORM = """async ([url, fields]) => {
    const r = await fetch(url, {method: "POST", body: new URLSearchParams(fields), redirect: "manual"});
    return r.type === "opaqueredirect" ? 303 : r.status;
}"""
"""A form POST from the page's own origin, as a forged or replayed form would be sent: the status it got."""


async def csrf_of(page: Page) -> str:
    token = await page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    return token


async def consent_state(stack: ConsentStack) -> str:
    [row] = await stack.sql("SELECT state FROM consents")
    return str(row["state"])


async def test_one_citizen_never_sees_nor_touches_anothers_data(stack: ConsentStack, demarche: Demarche,
                                                                open_page: OpenPage,
                                                                assert_accessible: AssertAccessible) -> None:
    # Marie: a consent to Lyon, an exchange under it, a proactive exchange of Paris, an objection
    marie = (await open_page()).page
    token = await consent_in_browser(marie, stack, demarche, citizen=MARIE)
    await lyon_exchange(stack, token)
    await paris_exchange(stack, MARIE)
    await marie.goto(stack.broker + "/citizen/oppositions")
    await marie.get_by_role("button", name=re.compile("M'opposer")).click()
    await expect(marie.get_by_text("Votre opposition est enregistrée")).to_be_visible()
    [consent] = await stack.sql("SELECT id FROM consents")
    [objection] = await stack.sql("SELECT id FROM objections")
    marie_entries = {str(r["id"]) for r in await stack.sql("SELECT id FROM access_log")}
    # Jean: one proactive exchange of Paris, before his own objection would have stopped it
    await paris_exchange(stack, JEAN)
    await integrate(stack)
    [jean_entry] = {str(r["id"]) for r in await stack.sql("SELECT id FROM access_log")} - marie_entries

    jean = (await open_page()).page
    await login(jean, stack, JEAN, "/citizen/journal")
    rows = jean.locator("ol.journal > li")
    await expect(rows).to_have_count(1)
    html = await jean.content()
    assert jean_entry in html and not any(e in html for e in marie_entries)
    for link in ("pour un tableur", "format JSON"):
        async with jean.expect_download() as info:
            await jean.get_by_role("link", name=re.compile(link)).click()
        text = await asyncio.to_thread((await (await info.value).path()).read_text, "utf-8")
        assert jean_entry in text and not any(e in text for e in marie_entries)

    await jean.goto(stack.broker + "/citizen/consentements")
    await expect(jean.get_by_text("Vous n'avez donné aucun consentement.")).to_be_visible()
    await jean.goto(stack.broker + "/citizen/oppositions")
    await expect(jean.get_by_text("Vous ne vous êtes opposé·e à aucun échange.")).to_be_visible()

    # Marie's records answer Jean as unknown ones do, even with his own valid CSRF token
    revoke = f"{stack.broker}/citizen/consentements/{consent['id']}/retrait"
    response = await jean.goto(revoke)
    assert response is not None and response.status == 404
    await expect(jean.get_by_role("heading", level=1)).to_have_text("Page introuvable")
    await assert_accessible(jean, "not found")
    await jean.goto(stack.broker + "/citizen/")
    jean_csrf = await csrf_of(jean)
    assert await jean.evaluate(POST_FORM, [revoke, {"csrf": jean_csrf}]) == 404
    withdraw = f"{stack.broker}/citizen/oppositions/{objection['id']}/retrait"
    assert await jean.evaluate(POST_FORM, [withdraw, {"csrf": jean_csrf}]) == 404
    receipt = await jean.request.get(f"{stack.broker}/citizen/api/consents/{consent['id']}/receipt")
    assert receipt.status == 404
    assert await consent_state(stack) == "active"
    assert len(await stack.sql("SELECT id FROM objections")) == 1

    # and Marie still sees all of hers, none of his
    await marie.goto(stack.broker + "/citizen/journal")
    html = await marie.content()
    assert all(e in html for e in marie_entries) and jean_entry not in html


async def test_session_cookie_csrf_and_expiry(stack: ConsentStack, demarche: Demarche, open_page: OpenPage,
                                             assert_accessible: AssertAccessible) -> None:
    tab = await open_page()
    page = tab.page
    await consent_in_browser(page, stack, demarche)
    [cookie] = [c for c in await tab.context.cookies() if c["name"] == "dlnuf_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # served over plain HTTP here; CitizenLoginConfig requires it over TLS
    assert cookie["expires"] > 0  # not a browser-session cookie: it ends with the server's session

    await page.goto(stack.broker + "/citizen/consentements")
    await page.get_by_role("link", name=re.compile("Retirer ce consentement")).click()
    url = page.url
    # a form without the token, or with another one, changes nothing, and says so
    assert await page.evaluate(POST_FORM, [url, {}]) == 403
    assert await page.evaluate(POST_FORM, [url, {"csrf": "x" * 43}]) == 403
    await page.locator("input[name=csrf]").last.evaluate("input => { input.value = 'x'.repeat(43); }")
    await page.get_by_role("button", name="Oui, retirer mon consentement").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Action refusée")
    await assert_accessible(page, "CSRF refusal")
    assert await consent_state(stack) == "active"
    await page.goto(url)

    # the session ends while the confirmation page is open: confirming changes nothing and says so (403, as the
    # OpenAPI document says), with a link to log in again that leads to the identity provider
    await stack.sql("UPDATE citizen_sessions SET created_at = now() - interval '1 hour', "
                    "expires_at = now() - interval '1 second'")
    await page.get_by_role("button", name="Oui, retirer mon consentement").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Session terminée")
    await assert_accessible(page, "ended session")
    assert await consent_state(stack) == "active"
    await page.get_by_role("link", name="Se connecter à nouveau").click()
    await page.wait_for_url(re.compile(re.escape(stack.issuer) + r"/authorize\?"))
    # a page asked for after the expiry also goes through the login, then comes back to it
    await login(page, stack, MARIE, "/citizen/journal")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Journal des accès à vos données")
