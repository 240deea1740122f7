"""A transparent HTTP proxy in front of a real broker, which can alter what comes back and keeps what went through.

It forwards the Host header unchanged, so the broker rebuilds the target URI its client signed (the proxy's). A test
sets `mutate` to play the attacker on the path: flip a byte of an answer, drop a header, answer in the broker's place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

# headers a proxy must not copy hop to hop (RFC 9110 §7.6.1), plus those aiohttp recomputes
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length",
                  "proxy-connection", "content-encoding"})


@dataclass
class Exchange:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes


Mutation = Callable[[Exchange, Reply], Reply]


@dataclass
class TamperingProxy:
    upstream: str
    sent: list[Exchange] = field(default_factory=list)
    mutate: Mutation | None = None
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Exchange(request.method, request.path_qs, CIMultiDict(request.headers), body)
        self.sent.append(seen)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers,
                allow_redirects=False) as resp:
            reply = Reply(resp.status, CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP),
                          await resp.read())
        if self.mutate is not None:
            reply = self.mutate(seen, reply)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def flip_byte(reply: Reply, needle: bytes) -> Reply:
    """The reply with one byte changed inside the first occurrence of `needle` (which must be there)."""
    at = reply.body.index(needle) + len(needle) // 2
    body = reply.body[:at] + bytes([reply.body[at] ^ 0x01]) + reply.body[at + 1:]
    return Reply(reply.status, reply.headers, body)
