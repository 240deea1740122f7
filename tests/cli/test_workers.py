"""`serve --workers 2`: two broker processes on one port, one database, and a log process serving no HTTP;
exchanges succeed, the log process integrates them, and the whole set stops cleanly on SIGTERM, the log process
last."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.consumer.client import BrokerClient
from broker.storage import db
from tests.broker_harness import broker_config, exchange_body, pivot, start_broker
from tests.factories import CONSUMER, PURPOSE, SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog_processes import _free_port, _ready

ROOT = Path(__file__).resolve().parents[2]


async def _children(pid: int, port: int, workers: int = 2) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """The exchange workers of `serve --workers` (listening on `port`) and its other spawned processes, once all
    `workers` listen (/readyz answers as soon as the first one does)."""
    for _ in range(200):
        spawned = [c for c in psutil.Process(pid).children()
                   if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]
        listening = [c for c in spawned if any(k.status == psutil.CONN_LISTEN and k.laddr.port == port
                                               for k in c.net_connections("tcp"))]
        if len(listening) == workers:
            break
        await asyncio.sleep(0.05)
    return listening, [c for c in spawned if c not in listening]


async def test_two_workers_share_the_port_and_stop_together(database_url: str, aiohttp_server: Any,
                                                           tmp_path: Path) -> None:
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    paris = consumer()
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/")))
    port = _free_port()
    # rounds a minute apart: the exchanges below are still queued when the set is told to stop
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: SANDBOX_TOKEN,
           "DLNUF_PUBLIC_URL": f"http://127.0.0.1:{port}", "DLNUF_LOG_INTERVAL": "60", "DLNUF_LOG_MMD": "300"}
    log = (tmp_path / "broker.log").open("w")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "serve", "--workers", "2",
                                                "--port", str(port), env=env, stdout=log, stderr=log, cwd=ROOT)
    conn = await db.connect(database_url)
    try:
        base = f"http://127.0.0.1:{port}"
        await _ready(base, proc)
        workers, others = await _children(proc.pid, port)
        assert len(workers) == 2 and len(others) == 1, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        async with BrokerClient(base, key=paris.key) as client:
            for _ in range(10):
                answer = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=CONSUMER,
                                               fields=["quotient_familial"], subject=pivot("dupont-marie-claire"))
                assert answer.data["quotient_familial"]["valeur"] == 582
        assert await conn.fetchval("SELECT count(*) FROM tlog_queue") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        log.close()
    try:
        _, alive = psutil.wait_procs(workers + others, timeout=5)
        assert not alive, [w.pid for w in alive]
        # the log process stopped after the exchange workers, with a last round over their entries
        assert await conn.fetchval("SELECT count(*) FROM tlog_queue") == 0
        assert await conn.fetchval("SELECT count(*) FROM tlog_entries") == await conn.fetchval(
            "SELECT count(*) FROM access_log")
    finally:
        await conn.close()
    text = (tmp_path / "broker.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of each sample of metric `name` in a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            found.append((series[len(name):], float(value)))
    return found


async def test_metrics_count_every_worker_whichever_answers_the_scrape(database_url: str, tmp_path: Path) -> None:
    """Unsigned requests are refused and counted (dlnuf_unauthenticated_refusals) by whichever worker the kernel
    gives each new connection; every scrape, answered by either worker, shows them all, and each live process (the
    exchange workers and the log process) figures under its pid."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_LOG_FORMAT": "json", "DLNUF_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "broker.log").open("w")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "serve", "--workers", "2",
                                                "--port", str(port), env=env, stdout=log, stderr=log, cwd=ROOT)
    sent = 40
    try:
        base = f"http://127.0.0.1:{port}"
        await _ready(base, proc)
        listening, others = await _children(proc.pid, port)
        assert len(listening) == 2 and len(others) == 1
        workers = {c.pid for c in listening + others}  # the log process is one of the node's processes too
        # a new connection per request, so that SO_REUSEPORT spreads them over both workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(sent):
                async with session.post(base + "/v1/exchanges", json={}) as resp:
                    assert resp.status == 401
            await asyncio.sleep(6)  # one round of each worker's process sampling (every 5 s)
            for _ in range(6):
                async with session.get(base + "/metrics") as resp:
                    text = await resp.text()
                refusals = sum(v for _, v in _samples(text, "dlnuf_unauthenticated_refusals_total"))
                assert refusals == sent, text
                pids = {labels for labels, _ in _samples(text, "dlnuf_worker_cpu_seconds")}
                assert pids == {f'{{pid="{pid}"}}' for pid in workers}, pids
                assert all(v > 0 for _, v in _samples(text, "dlnuf_worker_cpu_seconds"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        log.close()
    text = (tmp_path / "broker.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def test_event_loop_setting_fails_loudly() -> None:
    import importlib.util

    from broker.cli.workers import use_event_loop
    from broker.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="DLNUF_EVENT_LOOP"):
        load_config(env={"DLNUF_EVENT_LOOP": "tokio"})
    assert load_config(env={}).event_loop == "asyncio"
    if importlib.util.find_spec("uvloop") is None:
        with pytest.raises(SystemExit, match="uvloop is not installed"):
            use_event_loop("uvloop")


async def test_an_exchange_worker_leaves_the_rounds_to_the_log_process(database_url: str, aiohttp_client: Any,
                                                                        aiohttp_server: Any, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With `log_tasks` off (the exchange workers of `serve --workers`), an app answers and logs but never
    integrates, however many of its rounds' intervals go by; an app with it on (the log process) does."""
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    paris = consumer()
    registry = registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/"))
    exchange = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, registry, log_interval=0.05,
                                                                log_tasks=False), paris)
    answer = await exchange.exchange(exchange_body(fields=["quotient_familial"]))
    assert answer.status == 200, answer.body
    conn = await db.connect(database_url)
    try:
        await asyncio.sleep(1.0)  # twenty rounds' intervals
        assert (await conn.fetchval("SELECT count(*) FROM tlog_queue"),
                await conn.fetchval("SELECT count(*) FROM tlog_entries")) == (1, 0)
        await start_broker(aiohttp_client, broker_config(tmp_path, database_url, registry, log_interval=0.05), paris)
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM tlog_entries") == 1:
                break
            await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT count(*) FROM tlog_queue") == 0
    finally:
        await conn.close()
