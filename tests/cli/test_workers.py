"""`serve --workers 2`: two broker processes on one port, one database; exchanges succeed and the whole set
stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.consumer.client import BrokerClient
from tests.broker_harness import pivot
from tests.factories import CONSUMER, PURPOSE, SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog_processes import _free_port, _ready

ROOT = Path(__file__).resolve().parents[2]


async def test_two_workers_share_the_port_and_stop_together(database_url: str, aiohttp_server: Any,
                                                           tmp_path: Path) -> None:
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    paris = consumer()
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/")))
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: SANDBOX_TOKEN,
           "DLNUF_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    log = (tmp_path / "broker.log").open("w")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "serve", "--workers", "2",
                                                "--port", str(port), env=env, stdout=log, stderr=log, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
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
