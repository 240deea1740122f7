"""benchmarks/floor.py's reference server keeps what it stands for: the request's own nonce claimed before the
upstream is called (a replay never reaches it), the answer logged before it leaves, and a failure answered, never
a silent close that the load generator would count as a fast request."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import floor

ANSWER = b'{"quotient_familial": 1234}'
Upstream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Provider:
    """A loopback upstream that counts the calls it answers; `keep` False closes every connection after one."""

    def __init__(self, status: bytes = b"200 OK", keep: bool = True) -> None:
        self.status, self.keep, self.calls = status, keep, 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.calls += 1
                writer.write(b"HTTP/1.1 " + self.status + b"\r\nContent-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
                await writer.drain()
                if not self.keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[Callable[[Provider], Awaitable[int]]]:
    conn = await asyncpg.connect(database_url)
    await conn.execute(floor._TABLES)
    await conn.close()
    started: list[tuple[asyncio.Task[None], asyncio.Server]] = []

    async def start(provider: Provider) -> int:
        upstream = await asyncio.start_server(provider, "127.0.0.1", 0)
        upstream_port = upstream.sockets[0].getsockname()[1]
        port = floor.procs.free_port()
        task = asyncio.create_task(floor._serve({"floor": port}, database_url, upstream_port,
                                                b"GET /v3/quotient HTTP/1.1\r\nHost: upstream\r\n\r\n"))
        started.append((task, upstream))
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            w.close()
            return port
        raise AssertionError("the floor did not start")

    yield start
    for task, upstream in started:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        upstream.close()
        await upstream.wait_closed()


async def exchange(port: int, requests: list[bytes]) -> list[tuple[str, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for nonce in requests:
            signature = b'Signature-Input: sig=("@method");created=1;nonce="' + nonce + b'"\r\n' if nonce else b""
            writer.write(b"POST /api/v1/exchange HTTP/1.1\r\nHost: broker\r\n" + signature
                         + b"Content-Length: 2\r\n\r\n{}")
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(floor._content_length(head) or 0)
            answers.append((head.split(b"\r\n")[0].decode(), body))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


async def logged(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM floor_log"))
    finally:
        await conn.close()


async def test_a_replayed_nonce_is_refused_before_the_upstream_is_called(
        served: Callable[[Provider], Awaitable[int]], database_url: str) -> None:
    provider = Provider()
    port = await served(provider)
    answers = await exchange(port, [b"n-1", b"n-1", b"n-2"])
    assert answers == [("HTTP/1.1 200 OK", ANSWER), ("HTTP/1.1 401 Unauthorized", b""), ("HTTP/1.1 200 OK", ANSWER)]
    assert provider.calls == 2
    assert await logged(database_url) == 2


async def test_a_request_without_a_nonce_is_refused(served: Callable[[Provider], Awaitable[int]]) -> None:
    provider = Provider()
    port = await served(provider)
    assert await exchange(port, [b""]) == [("HTTP/1.1 400 Bad Request", b"")]
    assert provider.calls == 0


async def test_a_kept_connection_the_upstream_closed_is_replaced(
        served: Callable[[Provider], Awaitable[int]], database_url: str) -> None:
    provider = Provider(keep=False)
    port = await served(provider)
    answers = await exchange(port, [b"a", b"b", b"c"])
    assert [status for status, _ in answers] == ["HTTP/1.1 200 OK"] * 3
    assert await logged(database_url) == 3


async def test_an_upstream_failure_is_answered_502_and_nothing_is_logged(
        served: Callable[[Provider], Awaitable[int]], database_url: str) -> None:
    port = await served(Provider(status=b"500 Internal Server Error"))
    [(status, _)] = await exchange(port, [b"x"])
    assert status == "HTTP/1.1 502 Bad Gateway"
    assert await logged(database_url) == 0
