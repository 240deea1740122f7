"""Every page a citizen can meet, at 320, 390 and 1280 px: no sideways scrolling (WCAG 1.4.10), no axe-core
violation of any impact, the DSFR frame with the State's footer links, in French; and the keyboard path through the
consent screen and the portal, without a mouse."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page, expect

from adapters.sandbox.mailbox import MailCatcher
from broker.notify import links
from broker.service.state import STATE
from tests.browser.citizen import (
    MARIE,
    NAMES,
    Demarche,
    OpenPage,
    consent_in_browser,
    integrate,
    lyon_exchange,
    paris_exchange,
    pick_at_op,
    refused,
    screenshot,
    verify_row,
)
from tests.browser.conftest import AXE, BASES
from tests.consent_harness import ConsentStack, StartConsentStack
from tests.factories import PURPOSE

WIDTHS = (320, 390, 1280)
FOOTER = ("Accessibilité : non conforme", "Mentions légales", "Données personnelles")


@pytest.fixture
async def catcher() -> AsyncIterator[MailCatcher]:
    mailbox = MailCatcher()
    await mailbox.start()
    yield mailbox
    await mailbox.stop()


@pytest.fixture
async def mail_stack(start_consent_stack: StartConsentStack, demarche: Demarche, catcher: MailCatcher) -> ConsentStack:
    return await start_consent_stack(bases=BASES, names=NAMES, redirect_uri=demarche.url, smtp_port=catcher.port)


class Checker:
    """Looks at one page at every width: overflow, axe-core (any impact), the frame."""

    def __init__(self, axe: str) -> None:
        self.axe = axe
        self.seen: list[str] = []

    async def __call__(self, page: Page, name: str, *, frame: bool = True) -> None:
        self.seen.append(name)
        for width in WIDTHS:
            await page.set_viewport_size({"width": width, "height": 800})
            sizes = await page.evaluate("""() => ({
                document: document.documentElement.scrollWidth, body: document.body.scrollWidth,
                viewport: window.innerWidth,
                widest: [...document.querySelectorAll('body *')].filter((e) => e.getClientRects().length)
                  .map((e) => [e.getBoundingClientRect().right, e.tagName + '.' + e.className])
                  .filter(([right]) => right > window.innerWidth + 0.5).slice(0, 3)})""")
            assert sizes["document"] <= sizes["viewport"] and sizes["body"] <= sizes["viewport"], \
                f"{name} at {width} px scrolls sideways: {sizes}"
            if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
                await page.evaluate(self.axe)
            result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
            violations = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]]
            assert violations == [], f"{name} at {width} px: {violations}"
        if frame:
            assert await page.get_attribute("html", "lang") == "fr", name
            footer = page.locator("footer")
            for link in FOOTER:
                await expect(footer.get_by_role("link", name=link)).to_be_visible()
            icon = await page.get_attribute("link[rel=icon]", "href")
            assert icon is not None and (await page.request.get(page.url.split("/", 3)[0] + "//" +
                                                                 page.url.split("/", 3)[2] + icon)).ok
        await page.set_viewport_size({"width": 1280, "height": 900})


@pytest.fixture
def check(axe_source: str) -> Checker:
    return Checker(axe_source)


async def test_every_page_fits_a_phone_and_passes_axe(mail_stack: ConsentStack, demarche: Demarche,
                                                      open_page: OpenPage, check: Checker,
                                                      catcher: MailCatcher) -> None:
    stack = mail_stack
    assert AXE.exists()
    # a visitor: the login page, the public pages, French errors
    visitor = (await open_page()).page
    await visitor.goto(stack.broker + "/citizen/")
    await expect(visitor.locator("button.fr-connect")).to_be_visible()
    await check(visitor, "login page")
    await screenshot(visitor, "login-page.png")
    for path in ("/mentions-legales", "/donnees-personnelles", "/accessibilite"):
        await visitor.goto(stack.broker + path)
        await check(visitor, path)
    response = await visitor.goto(stack.broker + "/citizen/nulle-part")
    assert response is not None and response.status == 404
    await expect(visitor.get_by_role("heading", level=1)).to_have_text("Page introuvable")
    await check(visitor, "not found")
    response = await visitor.goto(stack.broker + f"/oauth/consent/{uuid.uuid4()}")
    assert response is not None and response.status == 404
    await check(visitor, "consent request expired")
    # the login cancelled at the identity provider
    await visitor.goto(stack.broker + "/citizen/")
    await visitor.locator("button.fr-connect").click()
    await visitor.wait_for_url(re.compile(re.escape(stack.issuer) + r"/authorize\?"))
    await visitor.click("button[name=decision][value=cancel]")
    await expect(visitor.get_by_role("heading", level=1)).to_have_text("Connexion annulée")
    await check(visitor, "login cancelled")

    # a citizen: the consent screen, then every page of the portal with entries of every kind
    page = (await open_page()).page

    async def on_screen(screen: Page) -> None:
        await check(screen, "consent screen")

    token = await consent_in_browser(page, stack, demarche, on_screen=on_screen)
    await lyon_exchange(stack, token)
    await paris_exchange(stack)
    async with stack.client(stack.paris) as paris:  # refused: another purpose than the habilitation's
        await refused(paris.exchange(dataset="quotient_familial", purpose="autre-finalite", recipient=stack.paris.siret,
                                     fields=["quotient_familial"], subject={"pivot_identity": _marie()}))
    await integrate(stack)
    for path, name in (("/citizen/", "home"), ("/citizen/journal", "journal"),
                       ("/citizen/journal/verification", "verification explained"),
                       ("/citizen/consentements", "consents"), ("/citizen/oppositions", "objections"),
                       ("/citizen/notifications", "notifications")):
        await page.goto(stack.broker + path)
        await check(page, name)
    await page.goto(stack.broker + "/citizen/journal")
    assert (await verify_row(page, 1)).startswith("Vérifiée")
    await page.locator("#verif-1-details summary").click()
    await check(page, "journal, verified, details open")
    await page.set_viewport_size({"width": 390, "height": 844})
    await screenshot(page, "journal-390.png")
    await page.set_viewport_size({"width": 1280, "height": 900})
    await page.goto(stack.broker + "/citizen/consentements")
    await page.get_by_role("link", name=re.compile("Voir le reçu")).click()
    await check(page, "receipt")
    await page.goto(stack.broker + "/citizen/consentements")
    await page.get_by_role("link", name=re.compile("Retirer ce consentement")).click()
    await check(page, "revocation confirmation")
    await page.locator("input[name=csrf]").last.evaluate("input => { input.value = 'x'.repeat(43); }")
    await page.get_by_role("button", name="Oui, retirer mon consentement").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Action refusée")
    await check(page, "CSRF refusal")

    # notifications: a typed address, its confirmation link and an unsubscribe link, opened without a session
    await page.goto(stack.broker + links.SETTINGS_PATH)
    await page.locator("label[for=rythme-each]").click()
    await page.fill("#adresse", "marie.autre@exemple.fr")
    await page.get_by_role("button", name="Enregistrer mon choix").click()
    await expect(page.get_by_text("Adresse à confirmer")).to_be_visible()
    await check(page, "notifications, address to confirm")
    [sub] = await stack.sql("SELECT id FROM mail_subscriptions")
    key = links.link_key(stack.app[STATE].subject_secret)
    await visitor.goto(stack.broker + links.CONFIRM_PATH + links.sign(key, links.CONFIRM, sub["id"]))
    await check(visitor, "confirm address")
    await visitor.get_by_role("button", name="Oui, confirmer mon adresse").click()
    await check(visitor, "address confirmed")
    await visitor.goto(stack.broker + links.UNSUBSCRIBE_PATH + links.sign(key, links.UNSUBSCRIBE, sub["id"]))
    await check(visitor, "unsubscribe")
    await visitor.get_by_role("button", name="Me désabonner").click()
    await check(visitor, "unsubscribed")

    await page.goto(stack.broker + "/citizen/")
    await page.get_by_role("button", name="Se déconnecter").click()
    await page.wait_for_url(stack.broker + "/citizen/logged-out**")
    await check(page, "logged out")
    assert len(check.seen) == 24, check.seen  # every page above, each at three widths


def _marie() -> dict[str, Any]:
    from adapters.sandbox import directory

    return directory().citizen(MARIE).pivot.to_json()


async def _tab_to(page: Page, selector: str, limit: int = 80) -> None:
    """Press Tab until the focused element matches `selector`; every element on the way must be visible."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        found = await page.evaluate("""(sel) => {
            const e = document.activeElement;
            const r = e.getBoundingClientRect();
            return {match: e.matches(sel), visible: r.width > 0 && r.height > 0, what: e.outerHTML.slice(0, 120)};
        }""", selector)
        assert found["visible"], f"focus went to something invisible: {found['what']}"
        if found["match"]:
            return
    raise AssertionError(f"{selector} is not reachable with Tab")


async def test_the_keyboard_path(stack: ConsentStack, demarche: Demarche, open_page: OpenPage) -> None:
    page = (await open_page()).page
    await page.set_viewport_size({"width": 390, "height": 844})
    # the login page: Tab to the FranceConnect button, Enter
    await page.goto(stack.broker + "/citizen/")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent.trim()") == "Contenu"  # the skip link first
    await _tab_to(page, "button.fr-connect")
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(re.escape(stack.issuer) + r"/authorize\?"))
    await pick_at_op(page, stack, MARIE)  # the identity provider's own page is not ours
    await page.wait_for_url(stack.broker + "/citizen/")

    # the consent screen: untick the address with the space bar, accept with Enter
    async with stack.client(stack.lyon) as lyon:
        auth = lyon.authorization_request(redirect_uri=demarche.url, dataset="quotient_familial", purpose=PURPOSE,
                                          fields=["quotient_familial", "enfants", "adresse"], frequency="periodic",
                                          duration_days=30)
        await page.goto(auth.url)
        await page.wait_for_url(re.compile(r".*/oauth/consent/"))
        await _tab_to(page, "input[value='0:adresse']")
        await page.keyboard.press("Space")
        await _tab_to(page, "button[value=accept]")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(re.escape(demarche.url) + r"\?"))
        code = demarche.arrivals[-1]["code"]
        token = await lyon.exchange_code(code=code, code_verifier=auth.code_verifier, redirect_uri=demarche.url)
    assert token.authorization_details[0]["fields"] == ["quotient_familial", "enfants"]
    await lyon_exchange(stack, token.access_token)
    await integrate(stack)

    # the journal: the navigation, then « Vérifier » on the newest access
    await page.goto(stack.broker + "/citizen/")
    await _tab_to(page, "a[href='/citizen/journal']")
    await page.keyboard.press("Enter")
    await page.wait_for_url(stack.broker + "/citizen/journal")
    await _tab_to(page, "button[data-verify]")
    await page.keyboard.press("Enter")
    await expect(page.locator("#verif-1")).to_have_class(re.compile("verify-ok"))

    # a revocation, through its confirmation page
    await _tab_to(page, "a[href='/citizen/consentements']")
    await page.keyboard.press("Enter")
    await page.wait_for_url(stack.broker + "/citizen/consentements")
    await _tab_to(page, "a[href$='/retrait']")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/retrait")
    await _tab_to(page, "form[action$='/retrait'] button")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Consentement retiré")).to_be_visible()

    # an objection, then logging out
    await _tab_to(page, "a[href='/citizen/oppositions']")
    await page.keyboard.press("Enter")
    await page.wait_for_url(stack.broker + "/citizen/oppositions")
    await _tab_to(page, "form[action='/citizen/oppositions'] button")
    await page.keyboard.press("Enter")
    await expect(page.get_by_text("Votre opposition est enregistrée")).to_be_visible()
    await _tab_to(page, "form[action='/citizen/logout'] button")
    await page.keyboard.press("Enter")
    await page.wait_for_url(stack.broker + "/citizen/logged-out**")


async def test_the_sample_demarche_fits_a_phone_and_passes_axe(start_consent_stack: StartConsentStack,
                                                               open_page: OpenPage, check: Checker) -> None:
    import socket

    from aiohttp import web

    from examples.cantine.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stack = await start_consent_stack(redirect_uri=base + "/retour", names=NAMES)
    runner = web.AppRunner(create_app(broker_url=stack.broker, key=stack.lyon.key, siret=stack.lyon.siret,
                                      base_url=base))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        page = (await open_page()).page
        await page.goto(base + "/")
        await check(page, "démarche, empty", frame=False)
        await page.get_by_role("link", name="Remplir avec mes données").click()
        await pick_at_op(page, stack, "rousseau-jean-baptiste")
        await page.wait_for_url(re.compile(r".*/oauth/consent/"))
        await page.click("button[name=decision][value=accept]")
        await page.wait_for_url(base + "/")
        await expect(page.get_by_label("Quotient familial")).to_have_value("1045")
        await check(page, "démarche, pre-filled", frame=False)
        await page.set_viewport_size({"width": 390, "height": 844})
        await screenshot(page, "demarche-prefilled-390.png")
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.get_by_label("Quotient familial").fill("1000")  # every value stays editable
        await page.get_by_role("button", name="Envoyer l'inscription").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Inscription envoyée")
        await expect(page.get_by_text("Corrigé par vous")).to_have_count(1)
        await check(page, "démarche, sent", frame=False)
    finally:
        await runner.cleanup()
