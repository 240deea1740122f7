"""The notification outbox against a real webhook server: retries with backoff until it takes the notification,
gives up after the configured attempts, and never holds up an exchange."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.signing import messages
from broker.signing.keys import public_keys_from_jwks
from broker.tlog.outbox import Outbox
from tests.broker_harness import Harness, broker_config, start_broker
from tests.factories import CONSUMER, LEGAL_URL, SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml


class Webhook:
    """Answers 500 to the first `failures` calls, then 200; keeps what it received."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.delivered = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        if len(self.calls) <= self.failures:
            return web.Response(status=500, text="not now")
        self.delivered.set()
        return web.Response(status=204)


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    return str(server.make_url("")).rstrip("/")


async def start(database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path, webhook_url: str,
                **overrides: Any) -> Harness:
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris], provider_url=sandbox),
                           log_key_file=tmp_path / "log-key", notify_webhook=webhook_url, outbox_backoff=0.05,
                           outbox_max_backoff=0.2, outbox_timeout=2.0, **overrides)
    return await start_broker(aiohttp_client, config, paris)


async def outbox_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch("SELECT * FROM notification_outbox ORDER BY id"))
    finally:
        await conn.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)


async def test_a_failing_webhook_gets_the_notification_once_it_recovers(
        database_url: str, aiohttp_client: Any, aiohttp_server: Any, sandbox: str, tmp_path: Path,
        token: None) -> None:
    hook = Webhook(failures=2)
    app = web.Application()
    app.router.add_post("/notify", hook.handle)
    server = await aiohttp_server(app)
    h = await start(database_url, aiohttp_client, sandbox, tmp_path, str(server.make_url("/notify")))

    answer = await h.exchange()
    assert answer.status == 200, answer.body  # whatever the webhook does
    await asyncio.wait_for(hook.delivered.wait(), 30)
    assert len(hook.calls) == 3
    headers, body = hook.calls[-1]
    assert {c[0]["Idempotency-Key"] for c in hook.calls} == {headers["Idempotency-Key"]}  # one notification
    entry_id = answer.json["log_entry_id"]
    notification = json.loads(body)
    [row] = await h.log_rows()
    assert notification == {
        "notification_id": headers["Idempotency-Key"], "entry_id": entry_id,
        "logged_at": notification["logged_at"], "subject_key": row["subject_key"], "consumer": CONSUMER,
        "recipient": CONSUMER, "dataset": "quotient_familial", "dataset_version": 1,
        "fields_released": ["quotient_familial", "enfants"], "purpose": "tarification-restauration-scolaire",
        "habilitation_id": f"cantine-{CONSUMER}",
        "legal_basis": {"type": "information", "title": "CRPA, article L114-8", "url": LEGAL_URL},
    }

    # signed by the broker, as its answers are
    async with h.client.get("/.well-known/jwks.json") as resp:
        keys = {k.kid: k for k in public_keys_from_jwks(await resp.json(), owner="broker")}

    async def fresh(*_: object) -> bool:
        return True

    verified = await messages.verify_request(method="POST", target_uri=str(server.make_url("/notify")),
                                            headers=headers, body=body, lookup_key=keys.get, claim_nonce=fresh,
                                            now=datetime.now(UTC))
    assert verified.organisation == "broker"

    for _ in range(100):
        [stored] = await outbox_rows(database_url)
        if stored["delivered_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert stored["attempts"] == 3 and stored["delivered_at"] is not None and stored["last_error"] is None
    metrics = (await (await h.client.get("/metrics")).read()).decode()
    assert 'dlnuf_outbox_deliveries_total{result="failed"} 2.0' in metrics


async def test_an_unreachable_webhook_never_blocks_exchanges_and_is_given_up(
        database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path, token: None,
        unused_tcp_port: int) -> None:
    h = await start(database_url, aiohttp_client, sandbox, tmp_path, f"http://127.0.0.1:{unused_tcp_port}/hook",
                    outbox_max_attempts=2)
    for _ in range(3):
        assert (await h.exchange()).status == 200
    for _ in range(200):
        rows = await outbox_rows(database_url)
        if all(r["gave_up_at"] is not None for r in rows):
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 3
    for r in rows:
        assert r["attempts"] == 2 and r["delivered_at"] is None and r["gave_up_at"] is not None
        assert "ClientConnectorError" in r["last_error"]


async def test_backoff_doubles_up_to_its_cap(database_url: str) -> None:
    from broker.signing.keys import generate_private_key
    from broker.storage import db

    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    outbox = Outbox(pool, "http://127.0.0.1:9/", signing_key=generate_private_key(), max_attempts=20, backoff=1.0,
                    max_backoff=30.0, timeout=1.0)
    try:
        assert [outbox.delay(n) for n in (1, 2, 3, 4, 5, 6, 100)] == [1, 2, 4, 8, 16, 30, 30]
        assert await outbox.deliver_due() == 0
    finally:
        await outbox.close()
        await pool.close()


async def test_no_webhook_no_worker_rows_wait(database_url: str, aiohttp_client: Any, sandbox: str,
                                              tmp_path: Path, token: None) -> None:
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris], provider_url=sandbox),
                           log_key_file=tmp_path / "log-key")
    h = await start_broker(aiohttp_client, config, paris)
    assert (await h.exchange()).status == 200
    [row] = await outbox_rows(database_url)
    assert row["attempts"] == 0 and row["delivered_at"] is None



async def test_a_worker_that_died_mid_delivery_only_delays_the_notification(
        database_url: str, aiohttp_server: Any) -> None:
    from broker.signing.keys import generate_private_key
    from broker.storage import db
    from broker.tlog import accesslog
    from tests.tlog.test_tlog import log_entry

    hook = Webhook(failures=0)
    app = web.Application()
    app.router.add_post("/notify", hook.handle)
    server = await aiohttp_server(app)
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    outbox = Outbox(pool, str(server.make_url("/notify")), signing_key=generate_private_key(), max_attempts=5,
                    backoff=0.05, max_backoff=0.1, timeout=1.0)
    try:
        await accesslog.commit(pool, log_entry(1))
        # a worker leases the notification (0.2 s), then dies before posting it
        [leased] = await pool.fetch(db.queries("broker.tlog", "tlog.sql")["outbox_claim"], 10, 0.2)
        assert await outbox.deliver_due() == 0  # leased: not sent twice meanwhile
        for _ in range(100):
            if await outbox.deliver_due():
                break
            await asyncio.sleep(0.05)
        assert len(hook.calls) == 1 and json.loads(hook.calls[0][1])["notification_id"] == str(leased["id"])
        [row] = await outbox_rows(database_url)
        assert row["attempts"] == 2 and row["delivered_at"] is not None
    finally:
        await outbox.close()
        await pool.close()


async def test_the_claim_reads_the_lines_it_leases_even_with_a_backlog(database_url: str) -> None:
    """A webhook down for hours leaves a backlog, each line rescheduled by its own failure (and one configured on a
    broker that ran without leaves every released entry's line). With 20,000 lines due in the statistics, the generic
    plan of the former claim hashed the whole outbox to find the 50 it took by id: 20,115 rows read (checked), 165
    after, at most 150 on migration 0040's index."""
    from broker.storage import db
    from broker.tlog import accesslog
    from tests.tlog.test_partitions import executed_plan, rows_read
    from tests.tlog.test_tlog import log_entry

    claim = db.queries("broker.tlog", "tlog.sql")["outbox_claim"]
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            for start in range(0, 20_000, 1000):
                await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 1000)])
        await pool.execute("UPDATE notification_outbox SET attempts = 3, last_error = 'webhook answered 503', "
                           "next_attempt_at = now() - id * interval '1 ms'")
        await pool.execute("VACUUM ANALYZE notification_outbox")
        async with pool.acquire() as conn:
            for mode in ("force_custom_plan", "force_generic_plan"):
                plan = await executed_plan(conn, claim, "50, 15", mode)
                # each line: found in the due index (in the claim's order since migration 0040: before, the sort on
                # (next_attempt_at, id) read up to 32 ahead) and locked, found by id, leased
                assert rows_read(plan, "notification_outbox") <= 3 * 50, (mode, plan)
        first, then = await pool.fetch(claim, 50, 15), await pool.fetch(claim, 50, 15)
        oldest = await pool.fetch("SELECT id FROM notification_outbox ORDER BY id DESC LIMIT 100")
        assert {r["id"] for r in first} | {r["id"] for r in then} == {r["id"] for r in oldest}  # due first, once
        assert {r["attempts"] for r in first + then} == {4}
    finally:
        await pool.close()
