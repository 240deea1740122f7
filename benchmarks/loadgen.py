"""The load generator: a lean HTTP/1.1 keep-alive client, closed-loop and open-loop, run in its own process(es).

Invariants:

* every broker request carries its own RFC 9421 signature, made by `broker.signing.sign_request` with the
  consumer's Ed25519 key and a fresh random nonce; the broker verifies each one and claims each nonce;
* signatures are made in a batch right before the timed window (`presign`), so signing competes with nothing
  being measured, or, with `inline_sign`, one by one as requests are sent (to show what that costs);
* every loop is bounded in count (the supply of requests) and in time (a deadline), every request by a timeout;
* open-loop latency runs from the moment a request was scheduled, not sent: a server that falls behind makes
  the next requests wait for a connection, and that wait is counted (no coordinated omission).

The client parses only what it needs (status line, Content-Length or chunked framing), so one process sends far
more requests per second than the broker can answer; `exchange.py` measures that ceiling against `serve_trivial`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson
from multidict import CIMultiDict

Clock = Callable[[], float]
now: Clock = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable across the processes of one machine


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class StaticRequest:
    """The same bytes every time (the provider stub, directly or through nginx)."""

    raw: bytes

    def make(self, n: int) -> list[bytes]:
        return [self.raw] * n

    def make_one(self) -> bytes:
        return self.raw


_KEYS: dict[str, Any] = {}  # kid -> PrivateKey, per process: key objects do not cross process boundaries


@dataclass(frozen=True, slots=True)
class SignedExchange:
    """`POST /v1/exchanges` to one broker, each copy signed anew (own `created`, own nonce), about a subject drawn
    at random from `others` and `body` when `others` is given (stack.Settings.subjects)."""

    endpoint: Endpoint
    body: bytes
    private_jwk: dict[str, Any]
    others: tuple[bytes, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{self.endpoint.host}:{self.endpoint.port}/v1/exchanges"

    def make_one(self) -> bytes:
        from broker.signing.keys import private_key_from_jwk
        from broker.signing.messages import sign_request

        key = _KEYS.get(self.private_jwk["kid"])
        if key is None:
            key = _KEYS[self.private_jwk["kid"]] = private_key_from_jwk(self.private_jwk)
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        body = self.body
        if self.others:
            i = secrets.randbelow(len(self.others) + 1)
            body = self.others[i - 1] if i else body
        signed = sign_request(method="POST", url=self.url, headers=headers, body=body, private_key=key)
        lines = [f"POST /v1/exchanges HTTP/1.1\r\nHost: {self.endpoint.host}:{self.endpoint.port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in signed.items()]
        lines.append("\r\n")
        return "".join(lines).encode("ascii") + body

    def make(self, n: int) -> list[bytes]:
        return [self.make_one() for _ in range(n)]


RequestMaker = StaticRequest | SignedExchange


def get_request(endpoint: Endpoint, path_query: str, headers: dict[str, str]) -> StaticRequest:
    head = f"GET {path_query} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return StaticRequest((head + "\r\n").encode("ascii"))


class _Supply:
    """Requests for one endpoint: a pre-signed batch (bounded), or signed on demand up to `limit`."""

    def __init__(self, maker: RequestMaker, limit: int, inline: bool) -> None:
        self.maker = maker
        self.inline = inline
        self.left = limit
        self.batch: deque[bytes] = deque() if inline else deque(maker.make(limit))

    def take(self) -> bytes | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return self.maker.make_one() if self.inline else self.batch.popleft()


# ---------------------------------------------------------------------------------------------- connection


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint_index: int) -> None:
        self.loop = loop
        self.endpoint_index = endpoint_index
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, float]] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is None:
            return
        status = self._parse()
        if status is not None:
            done = now()
            self._finish()
            if not waiter.done():
                waiter.set_result((status, done))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        self._finish()
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed by the server"))

    def _finish(self) -> None:
        self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        waiter = self._waiter
        self._finish()
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> int | None:
        """The status of the response at the head of the buffer once it is complete (and drop it), else None."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            total = end + 4 + int(head[start + 17 : stop if stop >= 0 else len(head)])
        elif b"\r\ntransfer-encoding: chunked" in head:
            found = _chunked_end(buf, end + 4)
            if found is None:
                return None
            total = found
        else:
            total = end + 4
        if len(buf) < total:
            return None
        del buf[:total]
        if b"\r\nconnection: close" in head:
            self.close()
        return status

    def request(self, raw: bytes, timeout: float) -> asyncio.Future[tuple[int, float]]:
        assert self.transport is not None and self._waiter is None
        waiter = self.loop.create_future()
        self._waiter = waiter
        self._timer = self.loop.call_later(timeout, self._on_timeout)
        self.transport.write(raw)
        return waiter


def _chunked_end(buf: bytearray, pos: int) -> int | None:
    """The end offset of a chunked body starting at `pos` (no trailers), or None while incomplete."""
    for _ in range(1_000_000):  # bounded: a body has far fewer chunks
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            return eol + 4 if len(buf) >= eol + 4 else None
        pos = eol + 2 + size + 2
        if len(buf) < pos:
            return None
    raise ValueError("too many chunks")


async def _connect(endpoint: Endpoint, index: int) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(loop, index), endpoint.host, endpoint.port)
    return conn


# ---------------------------------------------------------------------------------------------- results


@dataclass(slots=True)
class Recorder:
    """Latencies (seconds) and statuses of the responses that count: completed inside the window (closed loop),
    or scheduled inside it (open loop: `by_schedule`, so that a late answer to a request of the window still
    counts, with all its lateness). `completed` counts answers received inside the window, whatever their
    schedule: the rate actually served."""

    window_start: float
    window_end: float
    by_schedule: bool = False
    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[int] = field(default_factory=Counter)
    last_done: float = 0.0
    completed: int = 0
    handled: int = 0  # every completion, warm-up included: what the servers did while the CPU meter ran
    trace: list[tuple[float, float]] | None = None  # (start, done) of each response that counts, when asked

    def add(self, started: float, done: float, status: int) -> None:
        self.handled += 1
        in_window = self.window_start <= done <= self.window_end
        self.completed += in_window
        if self.window_start <= started if self.by_schedule else in_window:
            self.latencies.append(done - started)
            self.statuses[status] += 1
            if self.trace is not None:
                self.trace.append((started, done))
            self.last_done = max(self.last_done, done)


@dataclass(slots=True)
class RunResult:
    latencies: bytes  # array("d") of seconds
    statuses: dict[int, int]
    elapsed: float  # the window, seconds
    completed: int = 0  # answers received inside the window
    sign_seconds: float = 0.0
    signed: int = 0
    exhausted: bool = False
    handled: int = 0
    dropped: int = 0  # open loop: scheduled requests never sent, the server being too far behind
    pid: int = 0


# ---------------------------------------------------------------------------------------------- closed loop


async def closed_loop(makers: list[RequestMaker], endpoints: list[Endpoint], *, concurrency: int, warmup: float,
                      duration: float, budget: int, request_timeout: float, start_at: float | None = None,
                      inline_sign: bool = False, ready: Callable[[], float] | None = None) -> RunResult:
    """`concurrency` connections, each sending its next request as soon as the previous answer is in.

    The window is `duration` seconds after `warmup`; it ends early if the supply of `budget` requests per
    endpoint runs out (then `exhausted` is set and the rate is computed over the time actually used).
    """
    t_sign = now()
    supplies = [_Supply(m, budget, inline_sign) for m in makers]
    sign_seconds = now() - t_sign
    conns = [await _connect(endpoints[i % len(endpoints)], i % len(endpoints)) for i in range(concurrency)]
    if ready is not None:
        start_at = ready()
    start = max(now(), start_at or 0.0)
    await asyncio.sleep(max(0.0, start - now()))
    rec = Recorder(window_start=start + warmup, window_end=start + warmup + duration)
    exhausted = False

    async def one_connection(conn: _Conn) -> None:
        nonlocal exhausted
        supply = supplies[conn.endpoint_index]
        while now() < rec.window_end:
            raw = supply.take()
            if raw is None:
                exhausted = True
                return
            if conn.closed:
                conn = await _connect(endpoints[conn.endpoint_index], conn.endpoint_index)
            started = now()
            try:
                status, done = await conn.request(raw, request_timeout)
            except (ConnectionError, TimeoutError, OSError):
                status, done = 0, now()
                conn.close()
            rec.add(started, done, status)

    try:
        await asyncio.wait_for(asyncio.gather(*(one_connection(c) for c in conns)),
                               timeout=warmup + duration + request_timeout + 5)
    finally:
        for c in conns:
            c.close()
    end = rec.window_end if not exhausted else max(rec.last_done, rec.window_start + 1e-3)
    return RunResult(rec.latencies.tobytes(), dict(rec.statuses), end - rec.window_start, rec.completed,
                     sign_seconds=sign_seconds, signed=0 if inline_sign else budget * len(makers),
                     exhausted=exhausted, handled=rec.handled, pid=os.getpid())


# ---------------------------------------------------------------------------------------------- open loop


async def open_loop(makers: list[RequestMaker], endpoints: list[Endpoint], *, rate: float, warmup: float,
                    duration: float, connections: int, request_timeout: float, phase: float = 0.0,
                    start_at: float | None = None, ready: Callable[[], float] | None = None,
                    trace: list[tuple[float, float]] | None = None) -> RunResult:
    """Requests scheduled every 1/`rate` seconds whatever the answers, over `connections` keep-alive
    connections; a request finding them all busy waits for one, and its latency includes that wait."""
    total = int(rate * (warmup + duration))
    t_sign = now()
    # each endpoint could in the worst case serve every request: bounded by `total` per endpoint
    supplies = [_Supply(m, total, inline=False) for m in makers]
    sign_seconds = now() - t_sign
    idle: deque[_Conn] = deque()
    for i in range(connections):
        idle.append(await _connect(endpoints[i % len(endpoints)], i % len(endpoints)))
    freed = asyncio.Event()
    if ready is not None:
        start_at = ready()
    start = max(now(), start_at or 0.0) + phase
    rec = Recorder(window_start=start + warmup, window_end=start + warmup + duration, by_schedule=True, trace=trace)
    interval = 1.0 / rate
    pending: set[asyncio.Task[None]] = set()
    hard_deadline = start + warmup + duration + request_timeout

    async def one(conn: _Conn, raw: bytes, scheduled: float) -> None:
        try:
            if conn.closed:
                conn = await _connect(endpoints[conn.endpoint_index], conn.endpoint_index)
            status, done = await conn.request(raw, request_timeout)
        except (ConnectionError, TimeoutError, OSError):
            status, done = 0, now()
            conn.close()
        rec.add(scheduled, done, status)
        idle.append(conn)
        freed.set()

    # a server that cannot keep up makes the dispatcher wait for connections; past this point the requests
    # still unsent are given up and reported as such (`dropped`), so an overloaded run stays bounded in time
    dispatch_deadline = start + warmup + duration + 2.0
    sent, exhausted = 0, False
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - now()
        if delay > 0:
            await asyncio.sleep(delay)
        while not idle and now() < dispatch_deadline:
            freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), timeout=max(0.001, dispatch_deadline - now()))
        if not idle or now() >= dispatch_deadline:
            break
        conn = idle.popleft()
        raw = supplies[conn.endpoint_index].take()
        if raw is None:
            exhausted = True
            break
        task = asyncio.create_task(one(conn, raw, scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    if pending:
        _, late = await asyncio.wait(pending, timeout=max(0.0, hard_deadline - now()) + 1)
        for task in late:
            task.cancel()
    for conn in idle:
        conn.close()
    return RunResult(rec.latencies.tobytes(), dict(rec.statuses), duration, rec.completed,
                     sign_seconds=sign_seconds, signed=total * len(makers), exhausted=exhausted, handled=rec.handled,
                     dropped=total - sent, pid=os.getpid())


# ---------------------------------------------------------------------------------------------- signing rate


def signing_rate(maker: SignedExchange, seconds: float, max_count: int = 200_000) -> tuple[int, float]:
    """How many complete signed requests (digest, signature base, Ed25519, serialisation) one process makes."""
    maker.make_one()
    count, start = 0, now()
    deadline = start + seconds
    while now() < deadline and count < max_count:
        maker.make_one()
        count += 1
    return count, now() - start


# ---------------------------------------------------------------------------------------------- worker process


def worker_main(pipe: Connection) -> None:
    """A load generator process: receives jobs from `exchange.py`, answers with `RunResult`s.

    Protocol: the parent sends `(kind, kwargs)`; the worker prepares (signs, connects), sends `("ready", pid)`,
    waits for `("go", start_at)`, runs, sends `("result", RunResult)`. `None` ends the process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us

    def ready() -> float:
        pipe.send(("ready", os.getpid()))
        if not pipe.poll(60):
            raise TimeoutError("no go from the parent")
        message = pipe.recv()
        assert message[0] == "go"
        return float(message[1])

    while True:
        if not pipe.poll(3600):
            return
        job = pipe.recv()
        if job is None:
            return
        kind, kwargs = job
        try:
            if kind == "closed":
                result = asyncio.run(closed_loop(ready=ready, **kwargs))
            elif kind == "open":
                result = asyncio.run(open_loop(ready=ready, **kwargs))
            elif kind == "sign":
                ready()
                count, elapsed = signing_rate(**kwargs)
                result = RunResult(b"", {}, elapsed, signed=count, pid=os.getpid())
            else:
                raise ValueError(f"unknown job {kind!r}")
            pipe.send(("result", result))
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------------------------------------- trivial server

_TRIVIAL_BODY = orjson.dumps({"ok": True})
_TRIVIAL_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(_TRIVIAL_BODY)).encode() + b"\r\n\r\n" + _TRIVIAL_BODY)


class _TrivialProtocol(asyncio.Protocol):
    """Answers every request with the same small 200, reading only the framing: the cheapest server we can
    write, so that a client's rate against it is the client's ceiling, not the server's."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buf[:end]).lower()
            start = head.find(b"\r\ncontent-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17 : stop if stop >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                break
            del self.buf[: end + 4 + length]
            out.append(_TRIVIAL_RESPONSE)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def serve_trivial(port: int) -> None:
    """Entry point of the trivial server process (127.0.0.1 only, until terminated)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_TrivialProtocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await asyncio.sleep(24 * 3600)  # bounded; the parent terminates us long before

    asyncio.run(run())
