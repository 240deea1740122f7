"""`python -m adapters.sandbox`: serve the sandbox providers for demos and manual tests.

Serves the API Particulier sandbox at the root (its paths start with /v3), the DGFiP sandbox under /dgfip, the
API Entreprise sandbox under /entreprise, with the same token (a bearer for API Particulier and API Entreprise, an
X-Api-Key for the DGFiP), and the sandbox FranceConnect OpenID Provider
under /franceconnect (its issuer), with one registered client. The token and the client secret are read from
environment variables (default DLNUF_SANDBOX_TOKEN and DLNUF_SANDBOX_FC_SECRET), never from the command line where
`ps` would show them; when a variable is unset a random value is generated and printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys

from adapters.sandbox import DEFAULT_SLOW_DELAY, api_entreprise, api_particulier, dgfip, franceconnect, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token-env", default="DLNUF_SANDBOX_TOKEN",
                   help="environment variable holding the bearer token (default: %(default)s)")
    p.add_argument("--slow-delay", type=float, default=DEFAULT_SLOW_DELAY,
                   help="seconds the slow fault citizen takes to answer (default: %(default)s)")
    p.add_argument("--fc-client-id", default="dlnuf-demo",
                   help="client id registered at the FranceConnect sandbox (default: %(default)s)")
    p.add_argument("--fc-redirect-uri", default="http://127.0.0.1:8080/citizen/callback",
                   help="the client's registered redirect URI (default: %(default)s)")
    p.add_argument("--fc-post-logout-uri", default=None,
                   help="the client's registered post-logout URI (default: /citizen/logged-out beside the redirect)")
    p.add_argument("--fc-secret-env", default="DLNUF_SANDBOX_FC_SECRET",
                   help="environment variable holding the client secret (default: %(default)s)")
    return p


def _secret(name: str, what: str, notes: list[str]) -> str:
    value = os.environ.get(name, "")
    if not value:
        value = secrets.token_urlsafe(24)
        notes.append(f"{name} is not set; generated {what}: {value}")
    return value


async def _run(args: argparse.Namespace, token: str, fc_secret: str, notes: list[str]) -> None:
    # One server for all: API Particulier's paths start with /v3, so the others fit under /dgfip and /franceconnect.
    app = api_particulier.create_app(token, slow_delay=args.slow_delay)
    app.add_subapp("/dgfip", dgfip.create_app(token, slow_delay=args.slow_delay))
    # API Entreprise's paths start with /v3 and /v4 too, some of them shared with API Particulier's prefixes.
    app.add_subapp("/entreprise", api_entreprise.create_app(token, slow_delay=args.slow_delay))
    post_logout = args.fc_post_logout_uri or args.fc_redirect_uri.rsplit("/", 1)[0] + "/logged-out"
    client = franceconnect.ClientConfig(fc_secret, [args.fc_redirect_uri], [post_logout])
    fc_app = franceconnect.create_app({args.fc_client_id: client})
    app.add_subapp("/franceconnect", fc_app)
    runner, url = await serve(app, host=args.host, port=args.port)
    fc_app[franceconnect.PROVIDER].issuer = url + "/franceconnect"
    app[api_particulier.FC_CHECK].userinfo = url + "/franceconnect/userinfo"
    print(f"API Particulier sandbox on {url} (paths /v3/...), DGFiP sandbox on {url}/dgfip (header X-Api-Key), "
          f"API Entreprise sandbox on {url}/entreprise (paths /v3/..., /v4/...), "
          f"FranceConnect sandbox issuer {url}/franceconnect (client {args.fc_client_id}, redirect URI "
          f"{args.fc_redirect_uri})", file=sys.stderr, flush=True)
    # after the banner, whose first line scripts read for the URL
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    notes: list[str] = []
    token = _secret(args.token_env, "bearer token", notes)
    fc_secret = _secret(args.fc_secret_env, "FranceConnect client secret", notes)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args, token, fc_secret, notes))


if __name__ == "__main__":
    main()
