"""The broker's aiohttp application: routes, middlewares, and the resources opened around it.

Resources are opened in `cleanup_ctx` order (database, then state and its background tasks, then the transparency
log's integrator and notification outbox) and closed in reverse.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import structlog
from aiohttp import web

from broker import registry
from broker.citizen import api as citizen_api
from broker.citizen import login as login_routes
from broker.citizen import oauth, pages, portal, site
from broker.citizen.portal import notifications
from broker.config import Config, verify_servable
from broker.exchange import catalogue
from broker.exchange.pipeline import handle_exchange
from broker.notify import worker as mail_worker
from broker.observability import runtime, tracing
from broker.observability.metrics import Metrics, multiprocess
from broker.service.attempts import AttemptStore, SourceBudget
from broker.service.claims import ClaimBatcher
from broker.service.middleware import request_id_middleware, signing_middleware
from broker.service.openapi import openapi_document
from broker.service.problems import problem_middleware
from broker.service.state import STATE, AdapterSet, BrokerState, RegistryCache
from broker.signing.keys import PrivateKey, jwk_thumbprint, load_or_create_broker_key
from broker.signing.plugin import PluggedKeys, load_plugin
from broker.storage import db, nodekeys, roles
from broker.storage.secretfile import create_once
from broker.tlog import partitions
from broker.tlog import routes as tlog_routes
from broker.tlog.log import NoteSigner, load_or_create_note_key
from consent import records as consent_records
from consent.sealing import Sealer

log = structlog.get_logger(__name__)

CONFIG = web.AppKey("config", Config)
DSN = web.AppKey("dsn", str)
ADMIN_DSN = web.AppKey("admin_dsn", str)
"""The owner's (or the embedded server's superuser's) DSN: for what serving must not do, e.g. the demo creating
its gateway's database; the same as DSN for a broker given one role."""
MAIL_WORKER = web.AppKey("mail_worker", asyncio.Task[None])
TRACER = web.AppKey("tracer", runtime.AllocationTracer)


def load_or_create_secret(path: Path) -> bytes:
    """The subject-key secret: shared by every process of one broker, created once, never logged."""
    data = create_once(path, lambda: secrets.token_bytes(32))
    if len(data) < 32:
        raise RuntimeError(f"{path} must hold at least 32 bytes")
    return data


def signing_keys(config: Config) -> tuple[PrivateKey, NoteSigner]:
    """The response key and the log's note key: a signer plug-in's (DLNUF_SIGNER_PLUGIN, an HSM's), else their
    files' (created if absent)."""
    plugged = load_plugin(config.signer_plugin, config) if config.signer_plugin else PluggedKeys()
    signing = plugged.response or load_or_create_broker_key(config.signing_key_file)
    note = (NoteSigner(config.log_origin, plugged.log) if plugged.log is not None
            else load_or_create_note_key(config.log_key_file, config.log_origin))
    return signing, note


def node_keys(config: Config, keys: tuple[PrivateKey, NoteSigner] | None = None) -> dict[str, nodekeys.NodeKey]:
    """The keys every node of one broker must share, by fingerprint (broker/storage/nodekeys.py); the files absent
    are created, as serving creates them."""
    signing, note = keys or signing_keys(config)
    subject = load_or_create_secret(config.subject_key_file)
    Sealer.from_file(config.identity_key_file)  # creates it if absent
    return {
        "signing": nodekeys.NodeKey("response-signing key (DLNUF_SIGNING_KEY)",
                                    jwk_thumbprint(signing.public_jwk()), str(config.signing_key_file)),
        "log": nodekeys.NodeKey("log note key (DLNUF_LOG_KEY)", nodekeys.public_fingerprint(note.verifier.vkey()),
                                str(config.log_key_file)),
        "subject": nodekeys.NodeKey("subject-key secret (DLNUF_SUBJECT_KEY)", nodekeys.secret_fingerprint(subject),
                                    str(config.subject_key_file)),
        "identity": nodekeys.NodeKey("identity-sealing key (DLNUF_IDENTITY_KEY)",
                                     nodekeys.secret_fingerprint(config.identity_key_file.read_bytes()),
                                     str(config.identity_key_file)),
    }


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    embedded: db.EmbeddedPostgres | None = None
    if config.database_url is None:
        embedded = await asyncio.to_thread(db.EmbeddedPostgres, config.state_dir / "pgdata")
        dsn = embedded.dsn()
        log.info("embedded PostgreSQL started", data_dir=str(embedded.data_dir))
    else:
        dsn = config.database_url
    if config.admin_database_url is not None:
        # migrations as the owner; the broker's role below only finds them done
        admin = await db.connect(config.admin_database_url)
        try:
            await db.migrate(admin)
            await partitions.ensure(admin, now=datetime.now(UTC))  # the broker role cannot create them
        finally:
            await admin.close()
    app[ADMIN_DSN] = config.admin_database_url or dsn
    if embedded is not None:
        # the demo serves like production: migrated as the superuser, served by the least-privilege role
        admin = await db.connect(dsn)
        try:
            await db.migrate(admin)
            await partitions.ensure(admin, now=datetime.now(UTC))
        finally:
            await admin.close()
        dsn = await roles.embedded_broker_dsn(dsn)
    app[DSN] = dsn
    conn = await db.connect(dsn)
    try:
        await db.migrate(conn)
        if embedded is not None:
            await roles.verify_least_privilege(conn)
        if config.registry_file is not None:
            text = config.registry_file.read_text("utf-8")
            report = await registry.apply(conn, registry.parse_registry(text, str(config.registry_file)),
                                          prune=config.registry_prune)
            log.info("registry applied", report=str(report))
    finally:
        await conn.close()
    yield
    if embedded is not None:
        # other broker processes may share this server; pgserver stops it when the last one leaves
        await asyncio.to_thread(embedded.stop)


async def state_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = await db.create_pool(app[DSN], min_size=config.pool_min, max_size=config.pool_max)
    claims_pool = await db.create_pool(app[DSN], min_size=1, max_size=config.pool_max,
                                       settings={"synchronous_commit": "off"})
    try:
        keys = signing_keys(config)
        app[tlog_routes.NOTE_KEY] = keys[1]
        # before anything is signed or derived: a node with other keys must not serve a single request
        await nodekeys.verify(pool, node_keys(config, keys))
    except BaseException:
        await claims_pool.close()
        await pool.close()
        raise
    metrics = Metrics()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=100),
        # one session serves every consumer and citizen: a cookie a provider set for one exchange must never go
        # with the next (tests/exchange/test_provider_cookies.py)
        cookie_jar=aiohttp.DummyCookieJar(),
        json_serialize=lambda o: orjson.dumps(o).decode(),
    )
    cache = RegistryCache(pool, poll=config.registry_poll)
    adapters = AdapterSet(session, metrics)
    cache.on_change(adapters.update)
    cache.on_change(lambda r: metrics.registry_version.set(r.version))
    await cache.refresh()
    budget = None if config.source_limit is None else SourceBudget(*config.source_limit)
    attempts = AttemptStore(pool, metrics, capacity=config.attempts_keep, budget=budget)
    state = BrokerState(
        config=config,
        pool=pool,
        registry=cache,
        adapters=adapters,
        signing_key=keys[0],
        subject_secret=load_or_create_secret(config.subject_key_file),
        metrics=metrics,
        sealer=Sealer.from_file(config.identity_key_file),
        attempts=attempts,
        claims_pool=claims_pool,
        claims=ClaimBatcher(claims_pool),
    )
    app[STATE] = state
    tasks = [asyncio.create_task(cache.watch()), asyncio.create_task(_housekeeping(pool)),
             asyncio.create_task(_sample_process(metrics)),
             asyncio.create_task(attempts.run())]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await attempts.flush()  # what the last interval refused
    await session.close()
    await state.claims.close()
    await claims_pool.close()
    await pool.close()


async def _sample_process(metrics: Metrics, every: float = 5.0) -> None:
    """Each worker's CPU and memory for /metrics when several share it (broker/observability/metrics.py)."""
    if not multiprocess():
        return
    while True:
        await asyncio.sleep(every)
        metrics.sample_process()


async def _housekeeping(pool: asyncpg.Pool, every: float = 30.0) -> None:
    """Forget nonces past their window, quota windows long ended and pushed authorization requests past theirs,
    and mark consents past their expiry as expired (with the event the citizen's record shows); an expired consent
    is refused anyway, this only keeps the records truthful."""
    while True:
        await asyncio.sleep(every)
        try:
            await pool.execute(db.queries()["nonce_purge"])
            await pool.execute(db.queries()["quota_purge"])
            await consent_records.expire_due(pool, datetime.now(UTC))
            await pool.execute(db.queries("consent", "consents.sql")["par_purge"], datetime.now(UTC))
        except db.DB_ERRORS as exc:
            log.warning("housekeeping failed", error=str(exc))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await db.fetchval(state.pool, "SELECT 1")
        checks["database"] = "ok"
    except db.DB_ERRORS as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["registry"] = f"version {state.registry.current.version}"
    checks["providers"], providers = state.adapters.readiness()
    ready = checks["database"] == "ok"
    # degraded: ready to serve, but some provider's datasets cannot be (an adapter not built, a breaker open)
    status = "not ready" if not ready else "ready" if checks["providers"] == "ok" else "degraded"
    return web.json_response({"status": status, "checks": checks, "providers": providers},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def debug_runtime(request: web.Request) -> web.Response:
    """Only with DLNUF_DEBUG_RUNTIME=true, and only to a loopback peer: a soak's view of this process.
    `?baseline=1` marks the allocation baseline; `?top=N` adds the top allocations (and growth since the baseline)."""
    peer = request.remote or ""
    if peer not in ("127.0.0.1", "::1"):
        raise web.HTTPNotFound()
    state = request.app[STATE]
    body = runtime.snapshot({"main": state.pool, "claims": state.claims_pool})
    tracer = request.app[TRACER]
    if request.query.get("baseline") == "1":
        tracer.mark_baseline()
    top = request.query.get("top", "")
    if top.isdigit() and 0 < int(top) <= 100:
        body["allocations"] = tracer.report(int(top))
    return web.json_response(body)


async def jwks(request: web.Request) -> web.Response:
    key = request.app[STATE].signing_key
    return web.json_response({"keys": [key.public_jwk()]}, headers={"Cache-Control": "max-age=300"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(openapi_document()), content_type="application/json")


async def citizen_login_ctx(app: web.Application) -> AsyncIterator[None]:
    """Citizen login (OpenID Connect, `broker.citizen.login`) on the broker's pool and HTTP session."""
    config, state = app[CONFIG], app[STATE]
    assert config.citizen_login is not None
    async with login_routes.running(app, config.citizen_login, pool=state.pool, http=state.adapters.session,
                                    subject_secret=state.subject_secret, sealer=state.sealer):
        yield


async def mail_ctx(app: web.Application) -> AsyncIterator[None]:
    """Citizens' notification e-mails (`broker.notify`): the mail queue's worker, when a relay is configured."""
    state = app[STATE]
    mailer = mail_worker.from_config(state.config, state.pool, sealer=state.sealer,
                                     subject_secret=state.subject_secret, registry=lambda: state.registry.current,
                                     metrics=state.metrics)
    if mailer is None:
        yield
        return
    task = app[MAIL_WORKER] = asyncio.create_task(mailer.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def create_app(config: Config) -> web.Application:
    verify_servable(config)
    if tracing.wanted():
        # before the Application is made: the instrumented one puts the server span outermost, so the request id
        # and every log line of the request fall inside it
        tracing.setup()
    app = web.Application(
        # html_errors innermost: a browser's 404 is a French page before it would become problem+json
        middlewares=[request_id_middleware, signing_middleware, problem_middleware, site.html_errors],
        client_max_size=config.max_body,
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(state_ctx)
    if config.citizen_login is not None:
        # the consent flow and the citizen API need a citizen login: without one they are not offered at all
        app.cleanup_ctx.append(citizen_login_ctx)
        login_routes.add_routes(app.router)
        oauth.add_routes(app)
        citizen_api.add_routes(app)
        portal.add_routes(app.router)
        if config.mail is not None:
            notifications.add_routes(app.router)
            app.cleanup_ctx.append(mail_ctx)
    app.cleanup_ctx.append(tlog_routes.tlog_ctx)
    app.router.add_post("/v1/exchanges", handle_exchange)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/.well-known/jwks.json", jwks)
    tlog_routes.add_routes(app.router)
    app.router.add_get("/v1/catalogue", catalogue.get_catalogue)
    app.router.add_get(catalogue.SCHEMA_ROUTE, catalogue.get_schema)
    if config.debug_runtime:
        app[TRACER] = runtime.AllocationTracer()
        app.router.add_get("/_debug/runtime", debug_runtime)
    pages.add_static_routes(app)
    site.add_routes(app, config.site)
    return app
