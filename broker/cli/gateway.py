"""`python -m broker gateway`: the consumer gateway, beside a form service (docs/gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from broker.config import ConfigError
from broker.gateway.app import Trust, create_gateway_app, start
from broker.gateway.config import GatewayConfig, load_gateway_config
from broker.observability.logs import configure
from broker.signing.keys import InvalidKey, private_key_from_jwk
from broker.tlog.checkpoint import CheckpointError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gateway", help="run the consumer gateway: plain HTTP in, signed exchanges to the broker")
    p.add_argument("--broker-url", help="the broker's base URL (DLNUF_GATEWAY_BROKER_URL)")
    p.add_argument("--siret", help="the organisation whose key this is (DLNUF_GATEWAY_SIRET)")
    p.add_argument("--key", type=Path, help="the organisation's private JWK (DLNUF_GATEWAY_KEY)")
    p.add_argument("--host", help="listen address, loopback by default (DLNUF_GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="listen port, 8090 by default (DLNUF_GATEWAY_PORT)")
    p.add_argument("--unix-socket", type=Path, help="listen on this Unix socket instead (DLNUF_GATEWAY_UNIX_SOCKET)")
    p.add_argument("--client-secret-file", type=Path,
                   help="require the secret in this file from callers (DLNUF_GATEWAY_CLIENT_SECRET_FILE)")
    p.add_argument("--state-dir", type=Path, help="embedded database of the record (DLNUF_GATEWAY_STATE_DIR)")


def _trust(config: GatewayConfig) -> Trust:
    try:
        key = private_key_from_jwk(json.loads(config.key_file.read_text("utf-8")))
    except (OSError, ValueError, InvalidKey) as exc:
        raise ConfigError(f"DLNUF_GATEWAY_KEY: cannot load {config.key_file}: {exc}") from None
    try:
        return Trust.load(config, key)
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (CheckpointError, InvalidKey, ValueError) as exc:
        raise ConfigError(f"DLNUF_GATEWAY_BROKER_JWKS, DLNUF_GATEWAY_LOG_KEY or the client secret: {exc}") from None


async def _serve(config: GatewayConfig, trust: Trust) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, address = await start(create_gateway_app(config, trust), config)
    how = ("mutual TLS" if config.mutual_tls else "client secret" if trust.client_secret else
           "this machine's processes only")
    print(f"DLNUF gateway for {config.siret} (key {trust.key.kid}) on {address}, callers: {how}; "
          f"broker {config.broker_url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    try:
        config = load_gateway_config(broker_url=args.broker_url, siret=args.siret, key_file=args.key, host=args.host,
                                     port=args.port, unix_socket=args.unix_socket,
                                     client_secret_file=args.client_secret_file, state_dir=args.state_dir)
        configure(config.log_format)
        trust = _trust(config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, trust))
    return 0
