"""The gateway's OpenAPI document describes every route and problem type, and fuzzing every operation of the
`python -m broker gateway` process, in front of a real broker, never yields a server error of its own."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp

from broker.gateway.app import Trust, create_gateway_app
from broker.gateway.config import load_gateway_config
from broker.gateway.openapi import openapi_document
from broker.gateway.problems import all_problem_types
from tests.broker_harness import Harness
from tests.factories import CONSUMER, consumer

ROOT = Path(__file__).resolve().parents[2]


def test_every_route_is_documented(tmp_path: Path) -> None:
    config = load_gateway_config(env={}, broker_url="https://dlnuf.example", siret=CONSUMER,
                                 key_file=tmp_path / "k.jwk", database_url="postgresql://unused/x")
    app = create_gateway_app(config, Trust(consumer().key))
    doc = openapi_document()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD":
            continue
        assert path in doc["paths"], f"{route.method} {path} is not in the gateway's OpenAPI document"
        assert route.method.lower() in doc["paths"][path], f"{route.method} {path} is not documented"


def test_every_problem_type_is_documented() -> None:
    documented = openapi_document()["components"]["x-problem-types"]
    assert set(documented) == {p.uri for p in all_problem_types()}
    assert all(uri.startswith("https://dlnuf.org/problems/gateway/") for uri in documented)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_fuzzing_every_operation_gives_no_server_error(broker: Harness, record_urls: object,
                                                             tmp_path: Path) -> None:
    assert callable(record_urls)
    key_file = tmp_path / "commune.jwk"
    key_file.write_text(json.dumps(broker.consumer.key.to_jwk()))
    port = _free_port()
    env = {**os.environ, "DLNUF_GATEWAY_BROKER_URL": broker.url("/").rstrip("/"), "DLNUF_GATEWAY_SIRET": CONSUMER,
           "DLNUF_GATEWAY_KEY": str(key_file), "DLNUF_GATEWAY_PORT": str(port),
           "DLNUF_GATEWAY_DATABASE_URL": await record_urls(), "DLNUF_LOG_FORMAT": "json"}
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "broker", "gateway", env=env, cwd=ROOT,
                                                    stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            async with aiohttp.ClientSession() as session:
                while True:
                    assert proc.returncode is None, log_path.read_text()
                    try:
                        async with session.get(base + "/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, "gateway not ready in time"
                    await asyncio.sleep(0.2)
            fuzz = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "schemathesis"), "run", base + "/openapi.json",
                "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "20261202",
                "--generation-database", "none", "--request-timeout", "10",
                cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(fuzz.communicate(), timeout=300)
            assert fuzz.returncode == 0, out.decode()[-4000:]
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=10)
    text = log_path.read_text()
    assert "unhandled error" not in text
    assert text.count("Traceback") == text.count("BadHttpMessage: 400")
