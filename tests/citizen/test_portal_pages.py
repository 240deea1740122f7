"""The citizen portal over plain HTTP: every page needs a session, and every page keeps to its Content-Security-Policy
by construction (no inline script, no style attribute), whatever a browser would do with it."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import aiohttp
import pytest
from yarl import URL

from tests.adapters.test_franceconnect_sandbox import pick_citizen
from tests.consent_harness import ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401

PAGES = ["/citizen/", "/citizen/journal", "/citizen/journal?du=2026-01-01&au=2025-01-01&administration=x",
         "/citizen/consentements", "/citizen/oppositions", "/citizen/journal/verification"]
PUBLIC = ["/mentions-legales", "/donnees-personnelles", "/accessibilite", "/citizen/logged-out"]
POSTS = ["/citizen/oppositions", "/citizen/oppositions/00000000-0000-0000-0000-000000000000/retrait",
         "/citizen/consentements/00000000-0000-0000-0000-000000000000/retrait"]


@pytest.fixture
async def stack(start_consent_stack: StartConsentStack) -> ConsentStack:  # noqa: F811
    return await start_consent_stack()


class _Inline(HTMLParser):
    """Collects what a strict CSP (script-src 'self', style-src 'self') would block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if "style" in names:
            self.found.append(f"style attribute on <{tag}>")
        self.found.extend(f"{k} on <{tag}>" for k in names if k.startswith("on"))
        if tag == "style":
            self.found.append("<style> element")


async def logged_in(stack: ConsentStack) -> aiohttp.ClientSession:
    browser = stack.browser()
    async with browser.get(stack.broker + "/citizen/login?next=/citizen/") as resp:
        page, url = await resp.text(), resp.url
    action, form = pick_citizen(page, "dupont-marie-claire")
    async with browser.post(url.join(URL(action)), data=form) as resp:
        assert resp.status == 200 and resp.url == URL(stack.broker + "/citizen/")
    return browser


async def test_without_a_session_every_page_sends_to_the_login(stack: ConsentStack) -> None:
    async with stack.browser() as browser:
        # the home is where a visitor learns what the portal is, and finds the FranceConnect button
        async with browser.get(stack.broker + "/citizen/", allow_redirects=False) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert 'class="fr-connect"' in page and 'action="/citizen/login"' in page
            assert 'name="next" value="/citizen/"' in page
        for path in [*PAGES[1:], "/citizen/journal/verification", "/citizen/journal.csv", "/citizen/journal.json"]:
            async with browser.get(stack.broker + path, allow_redirects=False) as resp:
                assert resp.status == 302, path
                assert resp.headers["Location"].startswith("/citizen/login?next="), path
        # a form sent without a session: 403 and a page to log in again, nothing done (issue 18: a redirect dropped
        # the form, and answered before the body was looked at, which the OpenAPI document did not say)
        for path in POSTS:
            async with browser.post(stack.broker + path, data={"csrf": "x"}, allow_redirects=False) as resp:
                assert resp.status == 403 and "Location" not in resp.headers, path
                page = await resp.text()
                assert "Session terminée" in page and "/citizen/login?next=%2Fcitizen%2F" in page, path


async def test_pages_keep_to_their_content_security_policy(stack: ConsentStack) -> None:
    async with await logged_in(stack) as browser:
        for path in PAGES:
            async with browser.get(stack.broker + path) as resp:
                assert resp.status == 200, path
                csp = resp.headers["Content-Security-Policy"]
                assert "script-src 'self';" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
                assert resp.headers["Cache-Control"] == "no-store"
                parser = _Inline()
                parser.feed(await resp.text())
                assert parser.found == [], (path, parser.found)
        # a POST without the session's token changes nothing
        for path in POSTS:
            async with browser.post(stack.broker + path, data={"csrf": "x" * 43}, allow_redirects=False) as resp:
                assert resp.status == 403, path
        # exports are downloads; the spreadsheet is French CSV: a BOM, then French headers separated by ;
        async with browser.get(stack.broker + "/citizen/journal.csv") as resp:
            assert re.match(r'attachment; filename="journal-mes-donnees-\d{4}-\d{2}-\d{2}\.csv"',
                            resp.headers["Content-Disposition"])
            assert (await resp.read()).startswith("\ufeffDate et heure (Paris);Administration;".encode())
    async with stack.browser() as visitor:  # pages anyone may read keep to it too
        for path in PUBLIC:
            async with visitor.get(stack.broker + path) as resp:
                assert resp.status == 200, path
                parser = _Inline()
                parser.feed(await resp.text())
                assert parser.found == [], (path, parser.found)


@pytest.mark.parametrize(("preset", "button"), [("franceconnect", 'class="fr-connect"'),
                                                 ("franceconnect-plus", 'class="fr-connect fr-connect--plus"'),
                                                 ("generic", "Se connecter avec Mon fournisseur")])
def test_the_login_page_shows_the_franceconnect_button_only_for_franceconnect(preset: str, button: str) -> None:
    from broker.citizen import pages

    html = pages.environment().get_template("portal_login.html").render(
        title="t", login_path="/citizen/login", next_path="/citizen/", provider_name="Mon fournisseur",
        franceconnect=preset.startswith("franceconnect"), plus=preset == "franceconnect-plus")
    assert button in html
    assert ("fr-connect" in html) == preset.startswith("franceconnect")
