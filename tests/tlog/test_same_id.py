"""A row reusing a genuine entry's id in another month (the broker role may insert into access_log, and with
OVERRIDING SYSTEM VALUE choose its `seq`, so it can even be integrated first) neither takes, hides nor is confused
with the genuine entry: in the API's proofs, in a tlog-proof's public leaf, or in the entry's notification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from broker.config import MailConfig
from broker.consumer.client import BrokerClient, ExchangeAnswer
from broker.errors import InvalidRequest
from broker.notify import subscriptions
from broker.notify.smtp import Outcome
from broker.notify.worker import Mailer
from broker.service.problems import problem_middleware
from broker.signing.keys import generate_private_key
from broker.storage import db
from broker.tlog import accesslog, leaves, routes, tlogproof
from broker.tlog.accesslog import LogEntry
from broker.tlog.log import TLOG, TransparencyLog, prune
from broker.tlog.outbox import Outbox
from consent.sealing import Sealer
from tests.service.test_contract import BASE
from tests.tlog.before_0031 import log_insert_before_0032
from tests.tlog.test_partitions import migrated_up_to, since
from tests.tlog.test_tlog import ORIGIN, log_entry, signer


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    return t


@pytest.fixture
async def client(tlog: TransparencyLog, aiohttp_client: Any) -> Any:
    app = web.Application(middlewares=[problem_middleware])  # the broker's errors, as the service answers them
    app[TLOG] = tlog
    app.router.add_get("/v1/log/entries/{entry_id}/proof", routes.entry_proof)
    app.router.add_get("/v1/log/entries/{entry_id}/tlog-proof", routes.entry_tlog_proof)
    return await aiohttp_client(app)


def same_id(genuine: LogEntry, logged_at: datetime, *, released: bool = False, **kwargs: Any) -> LogEntry:
    """Another entry with the genuine entry's id, logged at `logged_at` (in another month, or the same one)."""
    entry = log_entry(1, released=released, **kwargs)
    entry.id, entry.logged_at = genuine.id, logged_at
    return entry


async def older_month(pool: asyncpg.Pool, now: datetime, days: int = 400) -> datetime:
    """`days` before `now`, in a monthly partition of its own (created), not in the default partition."""
    then = now - timedelta(days=days)
    await pool.execute("SELECT access_log_create_partition($1::date)", then.date())
    return then


async def forge_first(pool: asyncpg.Pool, genuine: LogEntry, logged_at: datetime) -> LogEntry:
    """A row with the genuine entry's id, in another month, inserted while the genuine one waits for its index,
    with a `seq` below it: the integrator takes it first, so it holds the lower index."""
    forged = same_id(genuine, logged_at)
    columns = (*accesslog.COLUMNS, "leaf_hash", "seq")
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    await pool.execute(f"INSERT INTO access_log ({', '.join(columns)}) OVERRIDING SYSTEM VALUE VALUES ({values})",
                       *forged.args(), forged.leaf(), -1)
    return forged


def document(entry: LogEntry) -> dict[str, Any]:
    return leaves.entry_document(entry.row())


def at(entry: LogEntry) -> str:
    return str(document(entry)["logged_at"])


async def test_a_tlog_proofs_public_leaf_is_its_indexs(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                       client: Any) -> None:
    """The proof's `extra` (the public leaf) is read at the index the proof is for: before, it was read by id, and
    the row of the same id that the partitions listed first (an older month's) lent its leaf to the genuine
    entry's proof, which then verified for nothing."""
    old = await older_month(pool, datetime.now(UTC))
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    await tlog.drain()
    forged = same_id(genuine, old)
    await accesslog.commit(pool, forged)  # integrated after it, at index 1
    await tlog.drain()
    resp = await client.get(f"/v1/log/entries/{genuine.id}/tlog-proof", params={"logged_at": at(genuine)})
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    found, _ = tlogproof.verify(text, tlog.signer.verifier, origin=ORIGIN)  # the public leaf it carries
    assert (found.index, found.extra) == (0, leaves.leaf_data(document(genuine)))
    tlogproof.verify(text, tlog.signer.verifier, origin=ORIGIN, entry=document(genuine))


async def test_an_entrys_proof_is_named_by_its_logged_at(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                        client: Any) -> None:
    """A row with the genuine entry's id, inserted while the genuine entry waited for its index and given a lower
    `seq`, holds the first index. Asked by id and logged_at (the receipt's), the API answers the genuine entry's
    proof; by id alone it refuses, as the id names two entries: before, it answered the copy's (the first index)."""
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    forged = await forge_first(pool, genuine, datetime.now(UTC) - timedelta(days=730))
    assert await tlog.drain() == 2
    indices = {r["logged_at"]: r["log_index"] for r in await pool.fetch(
        "SELECT logged_at, log_index FROM tlog_entries WHERE entry_id = $1", genuine.id)}
    assert indices == {forged.logged_at: 0, genuine.logged_at: 1}

    for route in ("proof", "tlog-proof"):
        resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}", params={"logged_at": at(genuine)})
        assert resp.status == 200, await resp.text()
        if route == "proof":
            assert (await resp.json())["index"] == 1
        else:
            tlogproof.verify(await resp.text(), tlog.signer.verifier, origin=ORIGIN, entry=document(genuine))
        resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}")
        assert resp.status == 400, await resp.text()
        assert "logged_at" in (await resp.json())["detail"]
    resp = await client.get(f"/v1/log/entries/{genuine.id}/proof", params={"logged_at": "2020-01-01T00:00:00Z"})
    assert resp.status == 404


async def test_by_id_alone_while_the_genuine_entry_is_queued(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                             client: Any) -> None:
    """A copy integrated, the genuine entry still queued: by id alone only the copy had an index, and the route
    answered its proof as the entry's. Both are entries of that id: it refuses, and asks for logged_at."""
    genuine = log_entry(0)
    copy = same_id(genuine, datetime.now(UTC) - timedelta(days=730))
    await accesslog.commit(pool, copy)
    await tlog.drain()
    await accesslog.commit(pool, genuine)  # not integrated yet
    for route in ("proof", "tlog-proof"):
        resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}")
        assert resp.status == 400, await resp.text()
        assert "logged_at" in (await resp.json())["detail"]
        resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}", params={"logged_at": at(genuine)})
        assert resp.status == 404 and "not integrated" in (await resp.json())["detail"], await resp.text()


OUT_OF_RANGE = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00")


async def test_a_moment_out_of_range_is_a_bad_request(pool: asyncpg.Pool, tlog: TransparencyLog, client: Any) -> None:
    """A date-time whose UTC falls outside years 1 to 9999 is the request's fault (400), not the database's: the
    driver failed to encode it, and that was answered 503."""
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    await tlog.drain()
    for value in OUT_OF_RANGE:
        for route in ("proof", "tlog-proof"):
            resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}", params={"logged_at": value})
            assert resp.status == 400, (value, route, await resp.text())
            assert (await resp.json())["type"].endswith("/invalid-request")
        for member in ("since", "until"):
            with pytest.raises(InvalidRequest, match=f"^{member} is out of range"):
                routes._journal_request(orjson.dumps({"subject": BASE["subject"], member: value}))


async def test_the_sdk_asks_for_the_proof_of_its_receipts_entry(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                                client: Any) -> None:
    """`BrokerClient.inclusion_proof` names the entry by the receipt's logged_at too: with a copy of its id logged,
    it still gets, and checks, its own entry's proof (by id alone the broker would refuse)."""
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    await forge_first(pool, genuine, datetime.now(UTC) - timedelta(days=730))
    assert await tlog.drain() == 2
    answer = ExchangeAnswer(request_id="r", log_entry_id=str(genuine.id), dataset="quotient_familial", version=1,
                            fields_released=(), data_sha256="", data={}, raw={"log": {"entry": document(genuine)}})
    async with BrokerClient(str(client.make_url("")), key=generate_private_key(),
                            log_vkeys=[tlog.signer.verifier.vkey()]) as sdk:
        found, _ = tlogproof.verify(await sdk.inclusion_proof(answer), tlog.signer.verifier, origin=ORIGIN)
    assert found.index == 1


async def test_a_notification_is_its_entrys(pool: asyncpg.Pool, tlog: TransparencyLog, aiohttp_server: Any) -> None:
    """A released entry's notification is sent with its own row, and stays when a row reusing its id in another
    month (two years back, past its retention) is pruned. Before, the outbox named its entry by id alone: both rows
    were read, the one listed last (the copy, in the default partition) was sent, and pruning the copy deleted the
    genuine entry's notification."""
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    forged = same_id(genuine, datetime.now(UTC) - timedelta(days=730), subject_key="f" * 64)
    await accesslog.commit(pool, forged)

    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    box = Outbox(pool, str(server.make_url("/hook")), signing_key=generate_private_key(), max_attempts=3,
                 backoff=0.05, max_backoff=0.2, timeout=2.0)
    try:
        assert await box.deliver_due() == 1
    finally:
        await box.close()
    assert [(n["entry_id"], n["logged_at"], n["subject_key"]) for n in received] \
        == [(str(genuine.id), at(genuine), genuine.subject_key)]

    assert await tlog.drain() == 2
    pruned = await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    assert [p.logged_at for p in pruned] == [forged.logged_at]
    assert await pool.fetchval("SELECT count(*) FROM notification_outbox WHERE entry_id = $1", genuine.id) == 1


async def test_a_previous_release_notification_gets_its_own_entrys_logged_at(pool: asyncpg.Pool) -> None:
    """A broker of the release before 0032, serving during the rolling restart, writes the outbox line without
    logged_at: the table's trigger gives it that of the row its own statement logged, not of an older row with the
    same id."""
    genuine = log_entry(0)
    forged = same_id(genuine, datetime.now(UTC) - timedelta(days=730))
    await accesslog.commit(pool, forged)
    with log_insert_before_0032():
        await accesslog.commit(pool, genuine)
    assert [r["logged_at"] for r in await pool.fetch(
        "SELECT logged_at FROM notification_outbox WHERE entry_id = $1", genuine.id)] == [genuine.logged_at]


async def test_a_previous_release_line_with_the_copy_in_an_older_month(pool: asyncpg.Pool) -> None:
    """As above, the copy in a monthly partition (listed before the current month's, so read first by id alone)
    rather than the default one: only the trigger's xmin condition tells the rows apart."""
    old = await older_month(pool, datetime.now(UTC))
    genuine = log_entry(0)
    forged = same_id(genuine, old)
    await accesslog.commit(pool, forged)
    with log_insert_before_0032():
        await accesslog.commit(pool, genuine)
    assert [r["logged_at"] for r in await pool.fetch(
        "SELECT logged_at FROM notification_outbox WHERE entry_id = $1", genuine.id)] == [genuine.logged_at]


@pytest.fixture
async def at_0031(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with migrated_up_to(pg_server, 31, monkeypatch) as dsn:
        yield dsn


async def test_migration_0032_ties_each_notification_to_the_entry_written_with_it(at_0031: str) -> None:
    """The outbox lines already there get the logged_at of the row their own transaction wrote, even when a copy
    with the same id holds the first index."""
    pool = await db.create_pool(at_0031, min_size=1, max_size=2)
    try:
        tlog = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
        await tlog.ensure_checkpoint()
        genuine = log_entry(0)
        with log_insert_before_0032():
            await accesslog.commit(pool, genuine)
            await forge_first(pool, genuine, datetime.now(UTC) - timedelta(days=730))
            assert await tlog.drain() == 2
        async with pool.acquire() as conn:
            assert [m.version for m in await db.migrate(conn)] == since(32)
        assert [r["logged_at"] for r in await pool.fetch(
            "SELECT logged_at FROM notification_outbox WHERE entry_id = $1", genuine.id)] == [genuine.logged_at]
    finally:
        await pool.close()


@pytest.mark.parametrize("touch", ["UPDATE notification_outbox SET mail_fanned_out_at = now()",
                                   "UPDATE notification_outbox SET attempts = 1, next_attempt_at = now()"],
                         ids=["fanned-out", "claimed"])
async def test_migration_0032_after_the_outbox_line_was_updated(at_0031: str, touch: str) -> None:
    """As above, but the line was updated before the migration, as the mail fan-out (every line, within a second)
    and the webhook's claim do: its xmin is no longer its entry's, and the copy holds the first index."""
    pool = await db.create_pool(at_0031, min_size=1, max_size=2)
    try:
        tlog = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
        await tlog.ensure_checkpoint()
        genuine = log_entry(0)
        with log_insert_before_0032():
            await accesslog.commit(pool, genuine)
            await forge_first(pool, genuine, datetime.now(UTC) - timedelta(days=730))
            assert await tlog.drain() == 2
        await pool.execute(touch)
        async with pool.acquire() as conn:
            assert [m.version for m in await db.migrate(conn)] == since(32)
        assert [r["logged_at"] for r in await pool.fetch(
            "SELECT logged_at FROM notification_outbox WHERE entry_id = $1", genuine.id)] == [genuine.logged_at]
    finally:
        await pool.close()


class SentMails:
    """A relay that accepts every mail and keeps it."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, messages: list[EmailMessage]) -> list[Outcome]:
        self.sent.extend(messages)
        return [Outcome() for _ in messages]


class NoOrganisations:
    def organisation(self, siret: str) -> None:
        return None


def mailer(pool: asyncpg.Pool, sealer: Sealer) -> tuple[Mailer, SentMails]:
    relay = SentMails()
    config = MailConfig(host="127.0.0.1", port=1, security="none", username=None, password_env="UNUSED",
                        sender="Mes données <ne-pas-repondre@example.invalid>", public_url="https://b.example",
                        timeout=2.0)
    return Mailer(pool, config, sealer=sealer, link_key=b"l" * 32, registry=lambda: NoOrganisations(),  # type: ignore[arg-type, return-value]
                  max_attempts=3, backoff=0.1, max_backoff=0.2, relay=relay), relay  # type: ignore[arg-type]


async def subscribe(pool: asyncpg.Pool, sealer: Sealer, subject: str, since: datetime) -> None:
    await subscriptions.choose(pool, sealer, subject_key=subject, mode="each", address=f"{subject[0]}@fictif.invalid",
                               verified_address=f"{subject[0]}@fictif.invalid", now=since)


async def test_the_access_mail_describes_its_own_entry(pool: asyncpg.Pool) -> None:
    """The mail was composed from the rows of the entry's id: a copy two years back, of another dataset, that came
    last in the answer gave the citizen its day and its dataset."""
    now, sealer, subject = datetime.now(UTC), Sealer(b"k" * 32), "a" * 64
    await subscribe(pool, sealer, subject, now - timedelta(days=1))
    genuine = log_entry(0, subject_key=subject)
    await accesslog.commit(pool, genuine)
    forged = same_id(genuine, now - timedelta(days=730), subject_key="f" * 64, dataset="avis_imposition")
    await accesslog.commit(pool, forged)
    mail, relay = mailer(pool, sealer)
    await mail.run_once(now)
    [sent] = relay.sent
    text = sent["Subject"] + str(sent.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]
    assert str(forged.logged_at.year) not in text and "avis" not in text.lower(), text


async def test_the_fan_out_tells_only_the_entrys_subject(pool: asyncpg.Pool) -> None:
    """A copy of another subject (who subscribed before it) is not the entry: its subject is not told of it."""
    now, sealer = datetime.now(UTC), Sealer(b"k" * 32)
    for subject in ("a" * 64, "b" * 64):
        await subscribe(pool, sealer, subject, now - timedelta(days=1))
    genuine = log_entry(0, subject_key="a" * 64)
    await accesslog.commit(pool, genuine)
    copy = same_id(genuine, now - timedelta(hours=1), subject_key="b" * 64)
    await accesslog.commit(pool, copy)
    mail, _ = mailer(pool, sealer)
    await mail.fan_out()
    assert [r["logged_at"] for r in await pool.fetch(
        "SELECT logged_at FROM mail_outbox WHERE kind = 'access'")] == [genuine.logged_at]


async def test_dropping_a_month_keeps_other_months_notifications(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """Pruning a month whole deletes its entries' notification lines, not those of another month's entry that
    shares an id with one of them."""
    old = await older_month(pool, datetime.now(UTC))
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    copy = same_id(genuine, old, released=True)
    await accesslog.commit(pool, copy)
    await tlog.drain()
    pruned = await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    assert [p.partition is not None for p in pruned] == [True], pruned
    assert [r["logged_at"] for r in await pool.fetch(
        "SELECT logged_at FROM notification_outbox WHERE entry_id = $1", genuine.id)] == [genuine.logged_at]


@pytest.fixture
async def at_0033(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with migrated_up_to(pg_server, 33, monkeypatch) as dsn:
        yield dsn


async def test_migration_0034_ties_each_access_mail_to_its_entry(at_0033: str) -> None:
    """The access mails queued before 0034 (by id) get the logged_at of the entry fanned out to them, not that of a
    later released copy of the same subject; one whose entry is gone is dropped."""
    pool = await db.create_pool(at_0033, min_size=1, max_size=2)
    try:
        now, sealer, subject = datetime.now(UTC), Sealer(b"k" * 32), "a" * 64
        await subscribe(pool, sealer, subject, now - timedelta(days=1))
        genuine, gone = log_entry(0, subject_key=subject), log_entry(2, subject_key=subject)
        await accesslog.commit(pool, genuine)
        await accesslog.commit(pool, gone)
        # the fan-out of the release before, into mail_outbox by id alone, in the statement marking the lines
        await pool.execute("""
            WITH marked AS (UPDATE notification_outbox SET mail_fanned_out_at = now()
                            WHERE mail_fanned_out_at IS NULL RETURNING entry_id)
            INSERT INTO mail_outbox (subscription_id, kind, entry_id)
            SELECT s.id, 'access', m.entry_id FROM marked m, mail_subscriptions s""")
        await pool.execute("ALTER TABLE access_log DISABLE TRIGGER USER")
        await pool.execute("DELETE FROM access_log WHERE id = $1", gone.id)
        await pool.execute("ALTER TABLE access_log ENABLE TRIGGER USER")
        copy = same_id(genuine, await older_month(pool, now), released=True, subject_key=subject)
        await accesslog.commit(pool, copy)
        async with pool.acquire() as conn:
            assert [m.version for m in await db.migrate(conn)] == since(34)
        assert [(r["entry_id"], r["logged_at"]) for r in await pool.fetch(
            "SELECT entry_id, logged_at FROM mail_outbox")] == [(genuine.id, genuine.logged_at)]
    finally:
        await pool.close()
