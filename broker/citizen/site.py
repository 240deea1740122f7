"""What every French public service's website carries, and its error pages: the mentions légales, the personal data
page, the accessibility statement, a favicon, and, for a browser, HTML errors in French instead of problem+json.

These pages need no session and exist whether or not citizen login is configured; they say who runs the service
from `SiteInfo` (DLNUF_OPERATOR_* and friends), and say plainly which variable to set when something is missing.
A request that asks for HTML (a browser's `Accept`) and gets a 404 or 405 reads a DSFR page; an API client keeps its
RFC 9457 problem (its `Accept` does not put `text/html` first).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from broker.citizen import pages
from broker.config import SiteInfo
from broker.service.problems import Handler

SITE = web.AppKey("citizen_site", SiteInfo)
ACCESSIBILITY = "/accessibilite"
LEGAL = "/mentions-legales"
PERSONAL_DATA = "/donnees-personnelles"
_OWN_FAVICON = pages.ROOT / "static" / "favicon.svg"


def _contact_href(contact: str | None) -> str | None:
    if contact is None:
        return None
    return contact if contact.startswith("https://") else "mailto:" + contact


def _info(request: web.Request) -> SiteInfo:
    return request.config_dict.get(SITE) or SiteInfo()


async def legal_notice(request: web.Request) -> web.Response:
    info = _info(request)
    return pages.render("site_legal.html", title="Mentions légales", site=info,
                        contact_href=_contact_href(info.contact))


async def personal_data(request: web.Request) -> web.Response:
    info = _info(request)
    return pages.render("site_personal_data.html", title="Données personnelles", site=info,
                        contact_href=_contact_href(info.contact), dpo_href=_contact_href(info.dpo))


async def accessibility(request: web.Request) -> web.Response:
    info = _info(request)
    return pages.render("site_accessibility.html", title="Déclaration d'accessibilité", site=info,
                        contact_href=_contact_href(info.contact))


def _favicon(path: Path, content_type: str) -> web.FileResponse:
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "public, max-age=86400"})


async def favicon_svg(request: web.Request) -> web.FileResponse:
    dsfr = pages.DSFR_DIST / "favicon" / "favicon.svg"
    return _favicon(dsfr if dsfr.is_file() else _OWN_FAVICON, "image/svg+xml")


async def favicon_ico(request: web.Request) -> web.StreamResponse:
    dsfr = pages.DSFR_DIST / "favicon" / "favicon.ico"
    if dsfr.is_file():
        return _favicon(dsfr, "image/x-icon")
    # browsers that ask for /favicon.ico also read an SVG there
    return _favicon(_OWN_FAVICON, "image/svg+xml")


def wants_html(request: web.Request) -> bool:
    """A browser navigating: `text/html` is what it asks for first. API clients send JSON or */*."""
    accept = request.headers.get("Accept", "")
    first = accept.split(",", 1)[0].split(";", 1)[0].strip().lower()
    return first in ("text/html", "application/xhtml+xml")


_ERRORS = {
    404: ("Page introuvable", "Cette adresse ne correspond à aucune page. Vérifiez-la, ou repartez de l'accueil."),
    405: ("Action impossible", "Cette page ne s'utilise pas ainsi. Repartez de l'accueil."),
}


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 404 or 405 for a browser is a French page with the site's frame; everything else is left as it is."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if not wants_html(request):
            raise
        title, message = _ERRORS[exc.status]
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = pages.render("message.html", status=exc.status, title=title, message=message,
                                links=[("/citizen/", "Accueil de « Mes données »")])
        if headers:
            response.headers.update(headers)
        return response


def add_routes(app: web.Application, info: SiteInfo) -> None:
    app[SITE] = info
    app.router.add_get(LEGAL, legal_notice)
    app.router.add_get(PERSONAL_DATA, personal_data)
    app.router.add_get(ACCESSIBILITY, accessibility)
    app.router.add_get("/favicon.svg", favicon_svg)
    app.router.add_get("/favicon.ico", favicon_ico)
