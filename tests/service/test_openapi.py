"""The OpenAPI document describes every route and problem type, and fuzzing every route never yields a 5xx."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.app import create_app
from broker.config import load_config
from broker.service.openapi import openapi_document
from broker.service.problems import all_problem_types
from tests.factories import consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]


def test_every_route_is_documented() -> None:
    # with citizen login and an SMTP relay configured, so the login, consent, citizen and mail routes are there too
    app = create_app(load_config(env={
        "DLNUF_OIDC_ISSUER": "https://op.example", "DLNUF_OIDC_CLIENT_ID": "dlnuf",
        "DLNUF_OIDC_REDIRECT_URI": "https://dlnuf.example/citizen/callback", "DLNUF_OIDC_CLIENT_SECRET": "s",
        "DLNUF_PUBLIC_URL": "https://dlnuf.example", "DLNUF_SMTP_HOST": "smtp.example",
        "DLNUF_MAIL_FROM": "Mes données <ne-pas-repondre@dlnuf.example>"},
        database_url="postgresql://unused/x"))
    assert any(r.resource and r.resource.canonical.startswith("/citizen/notifications") for r in app.router.routes())
    doc = openapi_document()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or "prefix" in info:  # static assets are not API
            continue
        assert path in doc["paths"], f"{route.method} {path} is not in the OpenAPI document"
        assert route.method.lower() in doc["paths"][path], f"{route.method} {path} is not documented"


def test_every_problem_type_is_documented() -> None:
    enum = openapi_document()["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert {p.uri for p in all_problem_types()} == set(enum)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[Any], deadline: float) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"broker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("broker not ready in time")


def test_fuzzing_every_operation_gives_no_server_error(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([consumer()]))
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_PORT": str(port), "DLNUF_LOG_FORMAT": "json",
           "DLNUF_TEST_API_PARTICULIER_TOKEN": "unused", "DLNUF_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    log = (tmp_path / "broker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "broker", "serve"], env=env, stdout=log, stderr=log, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc, time.monotonic() + 30)
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", base + "/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "20261122",
             "--generation-database", "none", "--request-timeout", "10"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    # aiohttp's own HTTP parser logs the malformed requests the fuzzer sends (a NUL in a header) and answers them
    # 400 itself before any handler runs; what must never appear is an error escaping the broker's handlers
    log_text = (tmp_path / "broker.log").read_text()
    assert "unhandled error" not in log_text
    assert log_text.count("Traceback") == log_text.count("BadHttpMessage: 400")


@pytest.mark.parametrize("path", ["/nope", "/v1/exchanges/x"])
async def test_unknown_route_is_a_problem(path: str, aiohttp_client: Any, database_url: str, tmp_path: Path) -> None:
    app: web.Application = create_app(load_config(env={}, database_url=database_url, state_dir=tmp_path,
                                                  host_from_request=True))
    client = await aiohttp_client(app)
    async with client.get(path) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert (await resp.json())["type"] == "https://dlnuf.org/problems/not-found"
    async with client.get("/v1/exchanges") as resp:
        assert resp.status == 405
        assert (await resp.json())["type"] == "https://dlnuf.org/problems/method-not-allowed"
