"""Two real broker processes (`python -m broker serve` on two ports, one database) answering exchanges at once:
the log they build together has no hole, no duplicate, and verifies."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.consumer.client import BrokerClient
from broker.storage import db
from broker.tlog.log import load_or_create_note_key
from broker.tlog.verify import DatabaseSource, verify_log
from tests.broker_harness import pivot
from tests.factories import CONSUMER, PURPOSE, SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "dlnuf.test/log"
PER_PROCESS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _ready(base: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert proc.returncode is None, f"broker exited with {proc.returncode}"
            try:
                async with session.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base} never became ready")


async def _integrated(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        metrics = dict(line.rsplit(" ", 1) for line in (await resp.text()).splitlines() if line[:1] != "#")
    count = float(metrics["dlnuf_tlog_integration_lag_seconds_count"])
    mean = float(metrics["dlnuf_tlog_integration_lag_seconds_sum"]) / count if count else 0.0
    return f"integrated {count:.0f} entries, mean lag {mean * 1000:.1f} ms"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


async def test_two_processes_append_concurrently_without_hole_or_duplicate(
        database_url: str, aiohttp_server: Any, tmp_path: Path, state_dir: Path) -> None:
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    paris = consumer()
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/")))
    ports = [_free_port(), _free_port()]
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(state_dir),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: SANDBOX_TOKEN,
           "DLNUF_LOG_ORIGIN": ORIGIN, "DLNUF_LOG_INTERVAL": "0.02", "DLNUF_LOG_BATCH": "3"}
    procs = []
    logs = [(tmp_path / f"broker-{port}.log").open("w") for port in ports]
    for port, log in zip(ports, logs, strict=True):
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "serve", "--port", str(port), stdout=log, stderr=log, cwd=ROOT,
            env={**env, "DLNUF_PUBLIC_URL": f"http://127.0.0.1:{port}"}))
    try:
        for port, proc in zip(ports, procs, strict=True):
            await _ready(f"http://127.0.0.1:{port}", proc)

        async def exchanges(port: int) -> list[str]:
            async with BrokerClient(f"http://127.0.0.1:{port}", key=paris.key) as client:
                answers = await asyncio.gather(*(client.exchange(
                    dataset="quotient_familial", purpose=PURPOSE, recipient=CONSUMER, fields=["quotient_familial"],
                    subject=pivot("dupont-marie-claire")) for _ in range(PER_PROCESS)))
            return [a.log_entry_id for a in answers]

        ids = [i for batch in await asyncio.gather(*(exchanges(p) for p in ports)) for i in batch]
        assert len(set(ids)) == 2 * PER_PROCESS

        conn = await db.connect(database_url)
        try:
            for _ in range(300):
                if not await conn.fetchval("SELECT count(*) FROM tlog_queue"):
                    break
                await asyncio.sleep(0.05)
            indices = [r["log_index"] for r in await conn.fetch(
                "SELECT x.log_index FROM access_log a JOIN tlog_entries x ON x.entry_id = a.id")]
            assert sorted(indices) == list(range(2 * PER_PROCESS))
            assert await conn.fetchval("SELECT size FROM tlog_head") == 2 * PER_PROCESS
            checkpoints = [r["size"] for r in await conn.fetch("SELECT size FROM tlog_checkpoints ORDER BY size")]
            assert checkpoints[-1] == 2 * PER_PROCESS
            print(f"\n{len(checkpoints)} checkpoints for {2 * PER_PROCESS} entries from 2 processes")
            signer = load_or_create_note_key(state_dir / "log-note-key", ORIGIN)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                report = await verify_log(DatabaseSource(conn), [signer.verifier], origin=ORIGIN,
                                          max_merge_delay=60)
            assert report.ok, report.findings
            assert report.entries == 2 * PER_PROCESS
        finally:
            await conn.close()
        for port in ports:  # who integrated what: figures, not assertions (either process may win every round)
            print(f"process on {port}: {await _integrated(port)}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
        for log in logs:
            log.close()
    # the processes stopped cleanly (graceful shutdown ran the final integration round)
    assert [p.returncode for p in procs] == [0, 0]
