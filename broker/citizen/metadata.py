"""The consent flow's authorization server metadata (RFC 8414), from which standard clients discover it.

Served at ``/.well-known/oauth-authorization-server`` (RFC 8414 §3) and, with the same content, at
``/.well-known/openid-configuration``, where OpenID-first libraries (openid-client's default) look. The broker is
no OpenID Provider (it issues no id_token), so the OpenID-only members are absent; the RFC 8414 ones that describe
what the broker does are all there, each true to the code that implements it.

Invariant: ``issuer`` is the broker's issuer identifier exactly as it names itself in tokens and in the ``iss`` of
its authorization responses (RFC 9207), so a client's mix-up check compares equal strings.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.citizen.client_auth import PAR_PATH, TOKEN_PATH
from broker.service.state import STATE
from broker.service.urls import issuer
from consent import client_auth, rar

OAUTH_PATH = "/.well-known/oauth-authorization-server"
OPENID_PATH = "/.well-known/openid-configuration"
AUTHORIZE_PATH = "/oauth/authorize"


def document(iss: str, *, require_par: bool) -> dict[str, Any]:
    return {
        "issuer": iss,
        "authorization_endpoint": iss + AUTHORIZE_PATH,
        "token_endpoint": iss + TOKEN_PATH,
        "pushed_authorization_request_endpoint": iss + PAR_PATH,
        "require_pushed_authorization_requests": require_par,
        "jwks_uri": iss + "/.well-known/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(client_auth.ALGORITHMS),
        "authorization_details_types_supported": [rar.TYPE],
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": [],
        "ui_locales_supported": ["fr"],
    }


async def get_metadata(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = document(issuer(request, state.config.public_url), require_par=state.config.oauth_require_par)
    return web.json_response(body, headers={"Cache-Control": "max-age=300"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(OAUTH_PATH, get_metadata)
    router.add_get(OPENID_PATH, get_metadata)
