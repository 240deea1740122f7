"""`serve --workers 2`: two broker processes on one port, one database; exchanges succeed and the whole set
stops cleanly on SIGTERM."""

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
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.consumer.client import BrokerClient
from broker.storage import db
from tests.broker_harness import pivot
from tests.factories import CONSUMER, PURPOSE, SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog_processes import _free_port, _ready

ROOT = Path(__file__).resolve().parents[2]


async def _serve_two_workers(database_url: str, provider_url: str, tmp_path: Path, paris: Any,
                             **more: str) -> tuple[asyncio.subprocess.Process, str, Any]:
    """`serve --workers 2` in its own session (so a test can signal its whole process group) with a registry naming
    `paris` and the provider at `provider_url`; its output in tmp_path/broker.log (the handle is returned)."""
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([paris], provider_url=provider_url))
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: SANDBOX_TOKEN,
           "DLNUF_PUBLIC_URL": f"http://127.0.0.1:{port}", **more}
    log = (tmp_path / "broker.log").open("w")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "serve", "--workers", "2",
                                                "--port", str(port), env=env, stdout=log, stderr=log, cwd=ROOT,
                                                start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


async def test_two_workers_share_the_port_and_stop_together(database_url: str, aiohttp_server: Any,
                                                           tmp_path: Path) -> None:
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    paris = consumer()
    proc, base, log = await _serve_two_workers(database_url, str(sandbox.make_url("")).rstrip("/"), tmp_path, paris)
    try:
        await _ready(base, proc)
        workers = [c for c in psutil.Process(proc.pid).children()
                   if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) == 2, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        async with BrokerClient(base, key=paris.key) as client:
            for _ in range(10):
                answer = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=CONSUMER,
                                               fields=["quotient_familial"], subject=pivot("dupont-marie-claire"))
                assert answer.data["quotient_familial"]["valeur"] == 582
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        log.close()
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, [w.pid for w in alive]
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
    gives each new connection; every scrape, answered by either worker, shows them all, and each live worker's
    process figures under its pid."""
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
        workers = {c.pid for c in psutil.Process(proc.pid).children()
                   if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())}
        assert len(workers) == 2
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

    import pytest

    from broker.cli.workers import use_event_loop
    from broker.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="DLNUF_EVENT_LOOP"):
        load_config(env={"DLNUF_EVENT_LOOP": "tokio"})
    assert load_config(env={}).event_loop == "asyncio"
    if importlib.util.find_spec("uvloop") is None:
        with pytest.raises(SystemExit, match="uvloop is not installed"):
            use_event_loop("uvloop")


@pytest.mark.parametrize("how", ["parent", "group", "ctrl-c"])
async def test_stopped_with_exchanges_in_flight_answers_and_integrates_them(how: str, database_url: str,
                                                                             aiohttp_server: Any,
                                                                             tmp_path: Path) -> None:
    """SIGTERM to the parent, to the whole process group (systemd's default KillMode=control-group, supervisord's
    stopasgroup, `kill -TERM -- -PGID`), or Ctrl-C (SIGINT to the group), while exchanges wait on a slow provider:
    each is answered, the set exits 0, and the workers' last rounds integrate every entry. (From helper-29's
    review: a worker that got the group's SIGTERM and then the parent's died in the middle of its cleanup.)"""
    provider = sandbox_app(SANDBOX_TOKEN)

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return await handler(request)

    provider.middlewares.append(slow)
    sandbox: TestServer = await aiohttp_server(provider)
    paris = consumer()
    # rounds a minute apart: only the workers' last rounds can integrate the exchanges in flight
    proc, base, log = await _serve_two_workers(database_url, str(sandbox.make_url("")).rstrip("/"), tmp_path, paris,
                                               DLNUF_LOG_INTERVAL="60", DLNUF_LOG_MMD="300")
    try:
        await _ready(base, proc)
        await asyncio.sleep(1.5)  # every worker listening

        async def one() -> None:
            async with BrokerClient(base, key=paris.key) as client:
                await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=CONSUMER,
                                      fields=["quotient_familial"], subject=pivot("dupont-marie-claire"))

        inflight = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.25)  # at the provider
        if how == "parent":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM if how == "group" else signal.SIGINT)
        done = await asyncio.gather(*inflight, return_exceptions=True)
        status = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
        log.close()
    assert status == 0, (tmp_path / "broker.log").read_text()[-3000:]
    conn = await db.connect(database_url)
    try:
        counts = [await conn.fetchval(f"SELECT count(*) FROM {t}")
                  for t in ("tlog_queue", "tlog_entries", "access_log")]
    finally:
        await conn.close()
    assert all(not isinstance(d, BaseException) for d in done), done  # the exchanges in flight were answered
    assert counts[0] == 0 and counts[1] == counts[2] >= 6, counts  # and integrated by the last rounds
