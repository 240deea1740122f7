"""Browser tests: headless Chromium (Debian's, never a downloaded one) driven by Playwright for Python.

Each test gets its own browser; `open_page` gives pages in separate contexts (one per citizen: separate cookie
jars). Every page records the Content-Security-Policy violations the browser reports, and a test fails if there is
one. When a test fails, a screenshot of each of its pages goes to `test-artifacts/` (git-ignored). axe-core comes
from node_modules (`npm ci`), is evaluated in the page by the test (never served to users), and `assert_accessible`
fails on any serious or critical violation.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.browser.citizen import ARTIFACTS, NAMES, ROOT, AssertAccessible, Demarche, OpenPage, Tab
from tests.consent_harness import LYON, PARIS, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = os.environ.get("DLNUF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRENCH = {"LANG": "fr_FR.UTF-8", "LANGUAGE": "fr", "LC_ALL": "fr_FR.UTF-8"}
"""The browser's own language, as a French citizen's: date fields read jj/mm/aaaa (with Debian's chromium-l10n;
without it, Chromium falls back to English)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # the outcome of the test's call, for the page fixture's teardown (screenshots on failure)
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()

BASES = {LYON: "consent", PARIS: "proactive"}
"""Lyon asks with the citizen's consent, Paris proactively (the citizen may object)."""


@pytest.fixture
async def demarche() -> AsyncIterator[Demarche]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    found = Demarche(f"http://127.0.0.1:{sock.getsockname()[1]}/retour")

    async def back(request: web.Request) -> web.Response:
        found.arrivals.append(dict(request.query))
        return web.Response(text='<!doctype html><html lang="fr"><head><title>Démarche</title></head>'
                                 "<body><main><h1>Retour à la démarche</h1></main></body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/retour", back)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield found
    await runner.cleanup()


@pytest.fixture
async def stack(start_consent_stack: StartConsentStack, demarche: Demarche) -> ConsentStack:  # noqa: F811
    return await start_consent_stack(bases=BASES, names=NAMES, redirect_uri=demarche.url)


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make test` (it installs Debian's chromium), or set "
                    "DLNUF_CHROMIUM")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, env={**os.environ, **FRENCH})
        yield launched
        await launched.close()


@pytest.fixture
async def open_page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[OpenPage]:
    tabs: list[Tab] = []

    async def open_(**context_options: Any) -> Tab:
        context = await browser.new_context(locale="fr-FR", timezone_id="Europe/Paris", accept_downloads=True,
                                            viewport={"width": 1280, "height": 900}, **context_options)
        page = await context.new_page()
        tab = Tab(page, context)

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                tab.csp_violations.append(message.text)

        page.on("console", on_console)
        tabs.append(tab)
        return tab

    yield open_
    failed = request.node.stash.get(_FAILED, False)
    if failed:
        ARTIFACTS.mkdir(exist_ok=True)
    for i, tab in enumerate(tabs):
        if failed and not tab.page.is_closed():
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            await tab.page.screenshot(path=ARTIFACTS / f"{name}-{i}.png", full_page=True)
        await tab.context.close()
    if not failed:
        for tab in tabs:
            assert not tab.csp_violations, tab.csp_violations


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci` (or `make test`)")
    return AXE.read_text("utf-8")


@pytest.fixture(scope="session")
def axe_report() -> Iterator[dict[str, Any]]:
    """Every page checked in this session, with all its violations (any impact), written to test-artifacts/."""
    report: dict[str, Any] = {}
    yield report
    if report:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "axe-report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))


@pytest.fixture
def assert_accessible(axe_source: str, axe_report: dict[str, Any]) -> AssertAccessible:
    """Run axe-core on the page (every rule but the experimental ones): no serious or critical violation."""

    async def check(page: Page, name: str) -> None:
        # evaluated through the DevTools protocol: the page's CSP (no inline script) does not apply, and the page
        # itself never loads axe
        if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
            await page.evaluate(axe_source)
        result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        violations = [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                       "nodes": [n["target"] for n in v["nodes"]]} for v in result["violations"]]
        axe_report[name] = violations
        serious = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert not serious, f"{name}: {json.dumps(serious, indent=2, ensure_ascii=False)}"

    return check


