"""BrokerRunner: what aiohttp's own parser refuses is answered as a signed problem, and counted as an
unauthenticated attempt (issue 13: headers over 8,190 bytes got aiohttp's 400 text/plain, no problem, no record)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from multidict import CIMultiDict

from broker.app import create_app
from broker.service.runner import BrokerRunner
from broker.service.state import STATE
from broker.signing import messages
from broker.signing import structured_fields as sf
from tests.broker_harness import broker_config
from tests.factories import consumer, registry_toml

PROBLEM = "https://dlnuf.org/problems/"


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[web.Application, int]]:
    app = create_app(broker_config(tmp_path, database_url, registry_toml([consumer()])))
    runner = BrokerRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield app, port
    finally:
        await runner.cleanup()


async def raw_request(port: int, data: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await reader.read()  # the broker closes the connection after such an answer
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict(line.split(": ", 1) for line in lines)  # type: ignore[misc]
    return int(status_line.split()[1]), headers, body


async def attempts(app: web.Application, database_url: str) -> list[asyncpg.Record]:
    await app[STATE].attempts.flush()
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch("SELECT * FROM unauthenticated_attempts ORDER BY seq"))
    finally:
        await conn.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
], ids=["one-header-of-10-kb", "200-header-fields"])
async def test_oversized_headers_get_a_signed_431_problem_and_are_counted(
        served: tuple[web.Application, int], database_url: str, request_bytes: bytes) -> None:
    app, port = served
    status, headers, body = await raw_request(port, request_bytes)
    assert status == 431
    assert headers["Content-Type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["type"] == PROBLEM + "header-too-large" and problem["status"] == 431
    state = app[STATE]
    # signed like every answer (no request signature to bind to): the digest and the signature verify
    messages.verify_content_digest(headers["Content-Digest"], body)
    signature = sf.parse_dictionary(headers["Signature"])["sig1"]
    assert isinstance(signature, sf.Item) and isinstance(signature.value, bytes)
    state.signing_key.public_key(owner="broker").verify(
        signature.value, messages.signature_base("sig1", headers=headers, status=status))
    [attempt] = await attempts(app, database_url)
    assert (attempt["reason"], attempt["http_status"], attempt["request_id"]) == (
        "header-too-large", 431, problem["request_id"])
    assert 'dlnuf_unauthenticated_refusals_total{reason="header-too-large"} 1.0' in \
        state.metrics.render().decode()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM access_log") == 0
    finally:
        await conn.close()


async def test_a_malformed_request_line_gets_a_400_problem(served: tuple[web.Application, int],
                                                          database_url: str) -> None:
    app, port = served
    status, headers, body = await raw_request(port, b"NOT-HTTP\r\n\r\n")
    assert status == 400 and headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(body)["type"] == PROBLEM + "bad-request"
    assert [a["reason"] for a in await attempts(app, database_url)] == ["bad-request"]


async def test_ordinary_requests_pass_through_the_runner(served: tuple[web.Application, int]) -> None:
    _, port = served
    status, _, body = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and json.loads(body) == {"status": "ok"}
