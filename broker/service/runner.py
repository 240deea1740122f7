"""Serving the broker: aiohttp's runner, with the refusals of its HTTP parser answered as problems too.

aiohttp refuses a request its parser cannot take (a header field or the request line over 8,190 bytes, more than
128 header fields, a malformed request line) with its own `400 text/plain`, before any middleware runs. The
broker's invariants are that every error is problem+json with a stable type, signed, and that such a refusal
counts as an unauthenticated attempt like any other. `BrokerRunner` gives each connection a request handler whose
`handle_error` does that: 431 `header-too-large` for what is too large, 400 `bad-request` for the rest.

It relies on two of aiohttp's internals (`Server.__call__` builds each connection's handler from `_loop` and
`_kwargs`); the tests of the 431 answer run through this runner, so an aiohttp that changes them fails a test,
not production.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from broker.service.attempts import Attempt, source_of
from broker.service.problems import HTTP_PROBLEMS, problem_response
from broker.service.state import STATE
from broker.signing import messages

log = structlog.get_logger(__name__)


def _too_large(exc: BaseException | None) -> bool:
    return isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message)


def _handler_class(app: web.Application) -> type[RequestHandler]:
    class ProblemRequestHandler(RequestHandler):
        __slots__ = ()

        def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                         message: str | None = None) -> web.StreamResponse:
            if status != 400 or request.writer.output_size > 0:
                return super().handle_error(request, status, exc, message)
            problem = HTTP_PROBLEMS[431 if _too_large(exc) else 400]
            request_id = str(uuid.uuid4())
            response = problem_response(problem, request_id=request_id)
            state = app.get(STATE)
            if state is not None:
                state.attempts.record(Attempt(
                    request_id=request_id, source=source_of(request), method="-", path="-",
                    reason="header-too-large" if problem.status == 431 else "bad-request",
                    problem_type=problem.uri, http_status=problem.status))
                assert isinstance(response.body, bytes)
                response.headers.update(messages.sign_response(
                    status=response.status, headers=response.headers, body=response.body, request=None,
                    private_key=state.signing_key, now=datetime.now(UTC)))
            response.headers["X-Request-Id"] = request_id
            response.force_close()  # the parser lost its place in the stream: the connection cannot go on
            return response

    return ProblemRequestHandler


class _ProblemServer(web.Server):
    handler_class: type[RequestHandler] = RequestHandler

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


class BrokerRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer HTTP parse errors as problems (see the module docstring)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProblemServer
        assert isinstance(server, _ProblemServer)
        server.handler_class = _handler_class(self.app)
        return server


async def until_signalled(*signals: signal.Signals) -> signal.Signals:
    """Wait for one of `signals` (default SIGINT and SIGTERM) and return it; the handlers are removed after."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    wanted = signals or (signal.SIGINT, signal.SIGTERM)

    def receive(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in wanted:
        loop.add_signal_handler(sig, receive, sig)
    try:
        return await received
    finally:
        for sig in wanted:
            loop.remove_signal_handler(sig)


def _ignore_while_stopping(first: signal.Signals) -> None:
    """From the first signal on, SIGINT and SIGTERM are only logged while the loop runs. The handlers are the
    process's, not the loop's: a loop puts the default actions back when it closes. They log through the loop:
    writing from a signal handler could re-enter the log stream's write."""
    loop = asyncio.get_running_loop()

    def again(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to log to
            loop.call_soon_threadsafe(lambda: log.info("already stopping", signal=signal.Signals(signum).name,
                                                       first=first.name))

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, again)


def _ignore_until_exit() -> None:
    # SIG_IGN, not a Python handler: the interpreter's finalization puts Python handlers back to the default
    # actions (CPython's _PySignal_Fini), and leaves ignored signals ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


async def serve(app: web.Application, *, host: str, port: int, reuse_port: bool = False,
                announce: Callable[[str], Any] | None = None) -> None:
    """Serve `app` until SIGINT or SIGTERM, then close it (its cleanup contexts run, in reverse order)."""
    runner = BrokerRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
        if announce is not None:
            announce(f"======== Running on {site.name} ========")
        received = await until_signalled()
        # The same signal may come again while the requests in flight finish, the cleanup contexts run (the last
        # log round) and the process exits: from `serve --workers`' parent after the whole process group got it
        # (systemd's default KillMode), or a second Ctrl-C. Its default action would kill the process in the
        # middle of that, or after the loop closed: a worker that had stopped quickly died of the parent's SIGTERM
        # (exit -15, 4 of 14 runs of the test under load). At once, before anything else: the defaults are back.
        _ignore_while_stopping(received)
        log.info("stopping", signal=received.name)
    except BaseException:
        await runner.cleanup()
        raise
    await runner.cleanup()
    _ignore_until_exit()
