"""The evidence of an exchange: committed with its entry, exported by `log evidence`, and verified offline by
`log verify-evidence` after the consumer's key was rotated out of the registry; refusals have evidence too."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.errors import LogUnavailable
from broker.registry import apply, parse_registry
from broker.storage import db
from broker.tlog import accesslog, evidence
from broker.tlog.log import prune
from tests.broker_harness import Harness, broker_config, exchange_body, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog import log_entry
from tests.tlog.test_tlog_api import get

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "dlnuf.test/log"


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris], provider_url=sandbox),
                           log_key_file=tmp_path / "state" / "log-note-key", log_origin=ORIGIN, log_interval=0.05)
    yield await start_broker(aiohttp_client, config, paris)


def run_log(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLNUF_STATE_DIR": str(state), "DLNUF_LOG_ORIGIN": ORIGIN, "DLNUF_LOG_FORMAT": "json"}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "broker", "log", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=False)


async def integrated(h: Harness, entry_id: str) -> None:
    for _ in range(200):
        if (await get(h, f"/v1/log/entries/{entry_id}/proof")).status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never integrated")


async def rotate_out(h: Harness, sandbox: str) -> None:
    """The registry now has a new key for the consumer, and not the one that signed the request."""
    fresh = consumer(kid="21750001600019-2027")
    conn = await db.connect(h.database_url)
    try:
        await apply(conn, parse_registry(registry_toml([fresh], provider_url=sandbox)), prune=True)
    finally:
        await conn.close()


async def test_evidence_of_a_real_exchange_verifies_offline_after_the_key_was_rotated_out(
        broker: Harness, sandbox: str, tmp_path: Path) -> None:
    answer = await broker.exchange()
    assert answer.status == 200, answer.body
    entry_id = answer.json["log_entry_id"]
    await integrated(broker, entry_id)
    jwks = tmp_path / "broker-jwks.json"  # the auditor keeps the broker's published keys
    jwks.write_text((await get(broker, "/.well-known/jwks.json")).body.decode())
    vkey = (await get(broker, "/v1/log")).json["verifier_key"]
    old_kid = broker.consumer.key.kid
    await rotate_out(broker, sandbox)
    pool = broker.state().pool
    assert await pool.fetchval("SELECT count(*) FROM organisation_keys WHERE kid = $1", old_kid) == 0
    assert await pool.fetchval("SELECT retired_at FROM key_history WHERE kid = $1", old_kid) is not None

    exported = run_log("evidence", entry_id, "--database-url", broker.database_url, "--out",
                       str(tmp_path / "evidence.json"), state=tmp_path / "state")
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "evidence.json").read_text())
    assert document["request"]["key"]["kid"] == old_kid and document["request"]["key"]["retired_at"]
    assert "dupont" not in json.dumps(document).lower()  # the request body (the identity) is not kept, nor the data
    checked = run_log("verify-evidence", str(tmp_path / "evidence.json"), "--vkey", vkey, "--broker-jwks",
                      str(jwks), state=tmp_path / "elsewhere")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("OK: 21750001600019 asked for quotient_familial")
    # the request signature the evidence holds is the one the consumer sent
    sent = answer.request_headers["Signature"].split(":")[1]
    assert document["request"]["signature"] == sent

    def refused(changed: dict[str, Any], **kw: Any) -> str:
        path = tmp_path / "tampered.json"
        path.write_text(json.dumps(changed))
        out = run_log("verify-evidence", str(path), "--vkey", vkey, "--broker-jwks", str(jwks), **kw,
                      state=tmp_path / "elsewhere")
        assert out.returncode == 1, (out.stdout, out.stderr)
        return out.stderr

    base = document["request"]["signature_base"]
    assert "request signature does not verify" in refused(
        {**document, "request": {**document["request"], "signature_base": base.replace("POST", "GET")}})
    assert "another organisation" in refused({**document, "entry": {**document["entry"], "consumer": "21690123100011"}})
    assert "signed status" in refused({**document, "response": {**document["response"], "status": 403}})
    other = {**document["request"], "signature": base64.b64encode(b"\x00" * 64).decode()}
    assert "does not verify" in refused({**document, "request": other})
    jwks.write_text(json.dumps({"keys": []}))
    assert "not among the broker keys" in refused(document)


async def test_a_refusal_has_its_evidence_and_an_unsigned_request_no_entry(broker: Harness) -> None:
    assert (await broker.exchange(exchange_body(purpose="curiosite"))).status == 403
    unsigned = await broker.send(json.dumps(exchange_body()).encode(), {"Content-Type": "application/json"})
    assert unsigned.status == 401  # before a signature verified: an unauthenticated attempt, never a log entry
    rows = await broker.state().pool.fetch(
        "SELECT a.http_status, a.request_signature_sha256, e.* FROM access_log a "
        "JOIN exchange_evidence e ON e.entry_id = a.id ORDER BY a.seq")
    assert [r["http_status"] for r in rows] == [403]
    assert await broker.state().pool.fetchval("SELECT count(*) FROM access_log") == 1
    assert rows[0]["request_signature"] is not None and rows[0]["request_signature_sha256"] is not None
    assert rows[0]["response_signature_base"].startswith(b'"@status": ')


async def test_no_entry_without_its_evidence(database_url: str) -> None:
    """One transaction: evidence that cannot be stored takes the entry down with it (503 upstream)."""
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        entry = log_entry(1)
        broken = evidence.Evidence(entry.id, entry.logged_at, "sig1", b"sig", None, "thumb", 200, b"s", b"b", "k")
        with pytest.raises(LogUnavailable):
            await accesslog.commit(pool, entry, broken)
        assert await pool.fetchval("SELECT count(*) FROM access_log") == 0
    finally:
        await pool.close()


async def test_evidence_is_pruned_with_its_entry_and_immutable_before(broker: Harness) -> None:
    answer = await broker.exchange()
    entry_id = uuid.UUID(answer.json["log_entry_id"])
    await integrated(broker, str(entry_id))
    pool = broker.state().pool
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await pool.execute("DELETE FROM exchange_evidence WHERE entry_id = $1", entry_id)
    await prune(pool, now=datetime.now(UTC) + timedelta(days=800), default_retention="P1Y")
    assert await pool.fetchval("SELECT count(*) FROM exchange_evidence WHERE entry_id = $1", entry_id) == 0
    with pytest.raises(evidence.UnknownEvidence):
        await evidence.export(pool, entry_id)
