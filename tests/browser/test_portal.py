"""The path a citizen takes through "Mes données", in headless Chromium: login through the sandbox FranceConnect,
a consent on the consent screen, the journal and the verification of its entries in the browser, a revocation
followed by a refused exchange, an objection followed by a refused proactive exchange, exports, logout."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
from pathlib import Path

from playwright.async_api import Page, expect

from broker.tlog.log import TLOG, leaf_of
from broker.tlog.verify import verify_entry_proof
from tests.browser.citizen import (
    IN_LOG,
    PROBLEM,
    AssertAccessible,
    Demarche,
    OpenPage,
    consent_in_browser,
    integrate,
    lyon_exchange,
    paris_exchange,
    refused,
    screenshot,
    verify_row,
)
from tests.consent_harness import ConsentStack
from tests.factories import PURPOSE_LABEL

REFUSED = PROBLEM + "legal-basis-refused"


async def journal_rows(page: Page) -> list[str]:
    """The journal's rows as the citizen reads them (lower-cased: badges are upper-cased by the stylesheet)."""
    return [(await r.inner_text()).lower() for r in await page.locator("ol.journal > li").all()]


async def download(page: Page, link: str) -> bytes:
    async with page.expect_download() as info:
        await page.get_by_role("link", name=re.compile(link)).click()
    path = await (await info.value).path()
    return await asyncio.to_thread(Path(path).read_bytes)


async def test_a_citizen_from_login_to_export(stack: ConsentStack, demarche: Demarche, open_page: OpenPage,
                                              assert_accessible: AssertAccessible) -> None:
    tab = await open_page()
    page = tab.page

    # 1. Lyon's démarche asks for her consent: she logs in at FranceConnect, reads the consent screen, accepts
    async def look(screen: Page) -> None:
        await expect(screen.get_by_role("heading", level=1)).to_contain_text("Partager vos données")
        await assert_accessible(screen, "consent screen")
        await screenshot(screen, "consent-screen.png", docs=True)

    token = await consent_in_browser(page, stack, demarche, on_screen=look)
    assert (await lyon_exchange(stack, token)).data["quotient_familial"]["valeur"] == 582
    # and Paris looks proactively for her entitlements
    await paris_exchange(stack)
    await integrate(stack)

    # 2. the portal's home, then the journal: the three accesses, newest first
    await page.goto(stack.broker + "/citizen/")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Mes données")
    assert "Marie Claire DUPONT" in await page.inner_text("body")
    await assert_accessible(page, "portal home")
    await screenshot(page, "portal-home.png")
    await page.get_by_role("link", name="Journal des accès", exact=True).first.click()
    await page.wait_for_url(stack.broker + "/citizen/journal")
    rows = await journal_rows(page)
    assert len(rows) == 3
    assert "ville de paris" in rows[0] and "démarche proactive" in rows[0]
    assert "ville de lyon" in rows[1] and "consentement" in rows[1] and "données transmises" in rows[1]
    # the consent screen's preview is an access too, shown to her alone: never presented as a transfer
    assert "aperçu pour vous seul·e" in rows[2] and "montrées : " in rows[2] and "rien ne lui a été transmis" in rows[2]
    assert "transmises" not in rows[2]
    assert all("quotient familial" in row for row in rows)
    await assert_accessible(page, "journal")

    # 3. "Vérifier": each entry is in the public log, checked by the browser
    for n in (1, 2, 3):
        assert (await verify_row(page, n)).startswith(IN_LOG)
    await assert_accessible(page, "journal, verified")
    await screenshot(page, "journal.png", docs=True)

    # 4. she revokes Lyon's consent, after a confirmation page; Lyon's next exchange is refused
    await page.get_by_role("link", name="Mes consentements").first.click()
    await expect(page.get_by_role("heading", name=re.compile("En cours"))).to_be_visible()
    await assert_accessible(page, "consents")
    await page.get_by_role("link", name=re.compile("Retirer ce consentement")).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Retirer votre consentement")
    await assert_accessible(page, "revocation confirmation")
    await screenshot(page, "portal-revoke.png")
    await page.get_by_role("button", name="Oui, retirer mon consentement").click()
    await expect(page.locator(".fr-alert--success")).to_contain_text("Consentement retiré")
    await expect(page.get_by_role("heading", name="Retirés (1)")).to_be_visible()
    await assert_accessible(page, "consents, after revocation")
    await screenshot(page, "portal-consents.png")
    assert await refused(lyon_exchange(stack, token)) == REFUSED

    # her receipt, as a page to read and print: what, with whom, why, until when, how to withdraw
    await page.get_by_role("link", name=re.compile("Voir le reçu")).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Reçu de votre consentement à Ville de Lyon")
    receipt_page = await page.inner_text("main")
    for fact in ("Ce qui est partagé", "Quotient familial", "Avec qui", "Pourquoi", "Jusqu'à quand",
                 "Comment le retirer", PURPOSE_LABEL):
        assert fact in receipt_page, fact
    await assert_accessible(page, "receipt")
    await screenshot(page, "portal-receipt.png")
    # the browser checks its signature with the broker's published key, and that it is this consent
    await page.get_by_role("button", name="Vérifier la signature").click()
    await expect(page.locator("#recu-verification")).to_contain_text("Signature vérifiée")
    # and the signed receipt downloads (anyone can verify it with the JWKS)
    receipt = (await download(page, "Télécharger le reçu signé")).decode()
    assert receipt.count(".") == 2
    # a receipt altered on its way is caught
    header, payload, signature = receipt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["dpv:hasPurpose"] = "autre-chose"
    forged = ".".join([header, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(),
                       signature])
    await page.route("**/receipt", lambda route: route.fulfill(body=forged, content_type="application/jwt"))
    await page.get_by_role("button", name="Vérifier la signature").click()
    await expect(page.locator("#recu-verification")).to_contain_text("le reçu a été modifié")
    await page.unroute("**/receipt")

    # 5. she objects to Paris's proactive exchanges; Paris is refused
    await page.get_by_role("link", name="Mes oppositions").first.click()
    await assert_accessible(page, "objections")
    await page.get_by_role("button", name=re.compile("M'opposer")).click()
    await expect(page.locator(".fr-alert--success")).to_contain_text("Votre opposition est enregistrée")
    await assert_accessible(page, "objections, after objecting")
    await screenshot(page, "portal-objections.png")
    assert await refused(paris_exchange(stack)) == REFUSED

    # 6. both refusals are in her journal, on top, and verify too
    await integrate(stack)
    await page.get_by_role("link", name="Journal des accès").first.click()
    rows = await journal_rows(page)
    assert len(rows) == 5
    assert "refusé" in rows[0] and "ville de paris" in rows[0]
    assert "refusé" in rows[1] and "ville de lyon" in rows[1]
    assert (await verify_row(page, 1)).startswith(IN_LOG)

    # 7. exports: the spreadsheet and the JSON hold the same five entries; the JSON verifies on its own
    table = list(csv.DictReader(io.StringIO((await download(page, "pour un tableur")).decode("utf-8-sig")),
                                delimiter=";"))
    document = json.loads(await download(page, "format JSON"))
    ids = [r["Identifiant de l'entrée"] for r in table]
    assert len(ids) == 5 and ids == [e["entry"]["id"] for e in document["entries"]]
    assert [r["Type"] for r in table] == ["Refusé", "Refusé", "Données transmises", "Données transmises",
                                          "Aperçu pour vous seul·e"]
    assert [r["Motif"].split(" : ")[0] for r in table[:2]] == ["Votre opposition", "Consentement absent ou retiré"]
    pinned = stack.app[TLOG].signer.verifier.vkey()  # as an auditor pins it, rather than the export's copy
    assert document["verifier_key"] == pinned
    for e in document["entries"]:  # as docs/portal.md shows
        verify_entry_proof({"checkpoint": document["checkpoint"], "tree_size": document["tree_size"], **e}, pinned,
                           origin=document["origin"], leaf_hash=leaf_of(e["entry"]))

    # 8. she withdraws her objection: Paris may ask again
    await page.get_by_role("link", name="Mes oppositions").first.click()
    await page.get_by_role("button", name=re.compile("Retirer mon opposition")).click()
    await expect(page.locator(".fr-alert--success")).to_contain_text("Votre opposition est retirée")
    await paris_exchange(stack)

    # 9. logout, here and at FranceConnect; the portal then asks to log in again
    await page.get_by_role("button", name="Se déconnecter").click()
    await page.wait_for_url(stack.broker + "/citizen/logged-out**")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("déconnecté")
    await assert_accessible(page, "logged out")
    await page.goto(stack.broker + "/citizen/journal")
    await page.wait_for_url(re.compile(re.escape(stack.issuer) + r"/authorize\?"))

