"""Server-rendered HTML pages (consent screen, citizen portal): Jinja2 with autoescaping, DSFR markup, and the
security headers every page gets.

The pages work without any asset: the DSFR stylesheet (`@gouvfr/dsfr`, installed by `make` under node_modules)
only dresses them. No inline script anywhere: the Content-Security-Policy forbids it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

ROOT = Path(__file__).resolve().parent
DSFR_DIST = ROOT.parents[1] / "node_modules" / "@gouvfr" / "dsfr" / "dist"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("broker.citizen", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["dsfr"] = DSFR_DIST.is_dir()
    return env


def csp(form_targets: Iterable[str] = ()) -> str:
    # form-action also governs where a form's redirect may lead (Chromium), hence the OAuth client's origin
    forms = " ".join(["'self'", *form_targets])
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
            f"connect-src 'self'; form-action {forms}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


def render(template: str, *, status: int = 200, form_targets: Iterable[str] = (), **context: Any) -> web.Response:
    html = environment().get_template(template).render(**context)
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": csp(form_targets),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    })


def add_static_routes(app: web.Application) -> None:
    app.router.add_static("/static/app", ROOT / "static", name="static-app")
    if DSFR_DIST.is_dir():
        app.router.add_static("/static/dsfr", DSFR_DIST, name="static-dsfr")
