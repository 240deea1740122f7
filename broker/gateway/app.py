"""The gateway's aiohttp application and how it listens.

Resources are opened in `cleanup_ctx` order (the record's database, then the broker client and its HTTP session) and
closed in reverse. Every route but /healthz admits the form service only (`broker.gateway.access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.consumer.client import BrokerClient
from broker.gateway import record as gateway_record
from broker.gateway.access import CALLER, CallerPolicy, load_or_create_client_secret
from broker.gateway.config import GatewayConfig
from broker.gateway.consent import post_par, post_token
from broker.gateway.errors import GatewayError
from broker.gateway.evidence import LogTrust
from broker.gateway.exchange import post_exchange
from broker.gateway.metrics import GatewayMetrics
from broker.gateway.oauth import AuthorizationServer
from broker.gateway.openapi import openapi_document
from broker.gateway.problems import ROUTES, Handler, error_response, problem_middleware
from broker.gateway.state import STATE, Gateway
from broker.signing.keys import PrivateKey, PublicKey, public_keys_from_jwks
from broker.storage import db

log = structlog.get_logger(__name__)

_OPEN = frozenset({"/healthz"})


@dataclass(frozen=True, slots=True)
class Trust:
    """What the gateway holds before it starts: the organisation's key, and what it pins of the broker."""

    key: PrivateKey
    broker_keys: tuple[PublicKey, ...] | None = None
    log: LogTrust | None = None
    client_secret: str | None = None

    @classmethod
    def load(cls, config: GatewayConfig, key: PrivateKey) -> Trust:
        """The pinned keys and the client secret the configuration names (created if its file is absent)."""
        broker_keys = None
        if config.broker_jwks_file is not None:
            jwks = json.loads(config.broker_jwks_file.read_text("utf-8"))
            broker_keys = tuple(public_keys_from_jwks(jwks, owner="broker"))
        secret = None
        if config.client_secret_file is not None:
            secret = load_or_create_client_secret(config.client_secret_file)
        return cls(key, broker_keys, LogTrust.of(config.log_keys) if config.log_keys else None, secret)


def _admission(policy: CallerPolicy, metrics: GatewayMetrics) -> Middleware:
    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _OPEN:
            try:
                request[CALLER] = policy.admit(request)
            except GatewayError as exc:
                log.warning("caller rejected", reason=str(exc), peer=request.remote, path=request.path)
                metrics.calls.labels(ROUTES.get(request.path, "other"), "rejected").inc()
                return error_response(exc)
        return await handler(request)

    return admit


def _broker_ssl(config: GatewayConfig) -> ssl.SSLContext | bool:
    if config.broker_ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(config.broker_ca_file))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[STATE]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await gw.record.ping()
        checks["record"] = "ok"
    except db.DB_ERRORS as exc:
        checks["record"] = f"unavailable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2), gw.client.session.get(gw.config.broker_url + "/healthz") as resp:
            checks["broker"] = "ok" if resp.status == 200 else f"answered {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    document = openapi_document(request.app[STATE].config.siret)
    return web.Response(body=orjson.dumps(document), content_type="application/json")


def create_gateway_app(config: GatewayConfig, trust: Trust) -> web.Application:
    gateway_metrics = GatewayMetrics()
    policy = CallerPolicy.of(config, trust.client_secret)
    app = web.Application(middlewares=[_admission(policy, gateway_metrics), problem_middleware],
                          client_max_size=config.max_body)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with gateway_record.opened(config.database_url, config.state_dir) as rec:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.timeout),
                                            connector=aiohttp.TCPConnector(ssl=_broker_ssl(config)))
            client = BrokerClient(config.broker_url, key=trust.key, broker_keys=trust.broker_keys, session=session,
                                  client_id=config.siret, max_skew=config.max_skew)
            app[STATE] = Gateway(config=config, client=client, record=rec, metrics=gateway_metrics,
                                 callers=policy, oauth=AuthorizationServer(config.broker_url, session),
                                 pinned_log=trust.log)
            try:
                yield
            finally:
                await session.close()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/exchanges", post_exchange)
    app.router.add_post("/oauth/token", post_token)
    app.router.add_post("/oauth/par", post_par)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app


def server_ssl(config: GatewayConfig) -> ssl.SSLContext | None:
    """TLS for the gateway's own address; with a client CA, every caller must present a certificate it issued."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        context.load_verify_locations(cafile=str(config.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start(app: web.Application, config: GatewayConfig) -> tuple[web.AppRunner, str]:
    """Start listening as configured; the runner and the address the form service calls."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    if config.unix_socket is not None:
        path = config.unix_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # the socket is created with the umask: no window where another user could connect
        previous = os.umask(0o117)
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(previous)
        return runner, f"unix:{path}"
    context = server_ssl(config)
    family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((config.host, config.port), family=family)
    await web.SockSite(runner, sock, ssl_context=context).start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    return runner, f"{'https' if context else 'http'}://{host}:{sock.getsockname()[1]}"
