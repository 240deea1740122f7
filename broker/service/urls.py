"""The broker's own URLs as others name them: behind a reverse proxy, the configured public base URL wins over what
the request says, because signatures and tokens must name the URL the consumer used."""

from __future__ import annotations

from aiohttp import web


def issuer(request: web.Request, public_url: str | None) -> str:
    """The broker's own base URL, as tokens name it (`iss`, `aud`)."""
    return public_url or str(request.url.origin())


def target_uri(request: web.Request, public_url: str | None) -> str:
    """The URI the consumer signed: behind a proxy, the configured public base plus the path and query."""
    if public_url:
        return public_url + request.raw_path
    return str(request.url)
