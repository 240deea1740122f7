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


def _wait_ready(url: str, proc: subprocess.Popen[Any], deadline: float, path: str = "/readyz") -> None:
    import urllib.request

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + path, timeout=1) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{proc.args} not ready in time")


def test_the_document_holds_under_schemathesis(database_url: str, tmp_path: Path) -> None:
    """Issue 18: every check of schemathesis (status codes, content types, headers, response schemas, positive data
    accepted, negative data refused, ...), positive and negative data, a fixed seed and a bounded number of examples
    per operation, against a broker with citizen login and e-mail configured (every route of the document is
    served): no failure. The few answers no schema can state are in schemathesis.toml, each with its reason."""
    sandbox_port, port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{port}"
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([consumer()], provider_url=f"http://127.0.0.1:{sandbox_port}"))
    secret = "schemathesis-client-secret-0123456789"
    env = {**os.environ, "DLNUF_SANDBOX_TOKEN": "unused", "DLNUF_SANDBOX_FC_SECRET": secret,
           "DLNUF_TEST_API_PARTICULIER_TOKEN": "unused"}
    broker_env = {
        **env, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
        "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_PORT": str(port), "DLNUF_LOG_FORMAT": "json",
        "DLNUF_PUBLIC_URL": base, "DLNUF_SOURCE_LIMIT": "0",
        "DLNUF_OIDC_ISSUER": f"http://127.0.0.1:{sandbox_port}/franceconnect", "DLNUF_OIDC_CLIENT_ID": "dlnuf",
        "DLNUF_OIDC_CLIENT_SECRET": secret, "DLNUF_OIDC_REDIRECT_URI": base + "/citizen/callback",
        # no mail leaves: the relay's port is closed; the notification routes are served
        "DLNUF_SMTP_HOST": "127.0.0.1", "DLNUF_SMTP_PORT": "9", "DLNUF_SMTP_SECURITY": "none",
        "DLNUF_MAIL_FROM": "Mes données <ne-pas-repondre@dlnuf.example>"}
    with (tmp_path / "sandbox.log").open("w") as sandbox_log, (tmp_path / "broker.log").open("w") as log:
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "adapters.sandbox", "--port", str(sandbox_port), "--fc-client-id", "dlnuf",
             "--fc-redirect-uri", base + "/citizen/callback"], env=env, stdout=sandbox_log, stderr=sandbox_log,
            cwd=ROOT)
        proc = None
        try:
            _wait_ready(f"http://127.0.0.1:{sandbox_port}/franceconnect/.well-known/openid-configuration", sandbox,
                        time.monotonic() + 30, path="")
            proc = subprocess.Popen([sys.executable, "-m", "broker", "serve"], env=broker_env, stdout=log,
                                    stderr=log, cwd=ROOT)
            _wait_ready(base, proc, time.monotonic() + 60)
            result = subprocess.run(
                [str(Path(sys.executable).parent / "schemathesis"), "--config-file",
                 str(Path(__file__).with_name("schemathesis.toml")), "run", base + "/openapi.json",
                 "--checks", "all", "--mode", "all", "--max-examples", "10", "--seed", "20261202",
                 "--generation-database", "none", "--request-timeout", "10"],
                capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
            )
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
            assert "Tested: " in result.stdout and " passed" in result.stdout, result.stdout[-2000:]
        finally:
            for p in (proc, sandbox):
                if p is not None:
                    p.terminate()
                    p.wait(timeout=20)
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
