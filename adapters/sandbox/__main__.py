"""`python -m adapters.sandbox`: serve the sandbox providers for demos and manual tests.

Serves the API Particulier sandbox at the root (its paths start with /v3) and the DGFiP sandbox under /dgfip,
with the same token (a bearer for the first, an X-Api-Key for the second). The token is read from an
environment variable (default DLNUF_SANDBOX_TOKEN), never from the command line where `ps` would show it; when
the variable is unset a random token is generated and printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys

from adapters.sandbox import DEFAULT_SLOW_DELAY, api_particulier, dgfip, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token-env", default="DLNUF_SANDBOX_TOKEN",
                   help="environment variable holding the bearer token (default: %(default)s)")
    p.add_argument("--slow-delay", type=float, default=DEFAULT_SLOW_DELAY,
                   help="seconds the slow fault citizen takes to answer (default: %(default)s)")
    return p


async def _run(host: str, port: int, token: str, slow_delay: float) -> None:
    # One server for both: API Particulier's paths start with /v3, so the DGFiP sandbox fits under /dgfip.
    app = api_particulier.create_app(token, slow_delay=slow_delay)
    app.add_subapp("/dgfip", dgfip.create_app(token, slow_delay=slow_delay))
    runner, url = await serve(app, host=host, port=port)
    print(f"API Particulier sandbox on {url} (paths /v3/...), DGFiP sandbox on {url}/dgfip (header X-Api-Key)",
          file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    token = os.environ.get(args.token_env, "")
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"{args.token_env} is not set; generated bearer token: {token}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args.host, args.port, token, args.slow_delay))


if __name__ == "__main__":
    main()
