"""A catch-all mail server for the demo and the tests: every mail the broker sends to citizens lands here.

The SMTP side is aiosmtpd (an asyncio SMTP server, RFC 5321): it takes any mail for any address, keeps it in memory
and, when given a directory, in a Maildir there (one file per mail, readable with any mail reader). A small web
page lists the mails received, newest first, with their links clickable, so a demo user can follow « Se
désabonner » or « Confirmer » as a citizen would.

It can stop and start again on the same port, which is how the tests show that mails wait in the broker's queue
while the relay is down.
"""

from __future__ import annotations

import asyncio
import html
import mailbox
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

_URL = re.compile(r"https?://[^\s<>\"]+")


class MailCatcher:
    """aiosmtpd's handler: keeps every message; `received` is set whenever one arrives."""

    def __init__(self, maildir: Path | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self.received = asyncio.Event()
        self._maildir = mailbox.Maildir(maildir, create=True) if maildir is not None else None
        self._server: asyncio.Server | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        if self._maildir is not None:
            self._maildir.add(raw)
        self.received.set()
        return "250 Message accepted for delivery"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen (again) for SMTP; returns the port, the same one when restarted."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTP(self, hostname="mailbox.sandbox", loop=loop),
                                                host, port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening: the relay is down until `start` again."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int) -> list[EmailMessage]:
        """At least `count` messages, waiting for them (callers bound the wait with `asyncio.timeout`)."""
        while len(self.messages) < count:
            self.received.clear()
            await self.received.wait()
        return self.messages


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def _linked(text: str) -> str:
    out, last = [], 0
    for m in _URL.finditer(text):
        out += [html.escape(text[last:m.start()]), f'<a href="{html.escape(m[0])}">{html.escape(m[0])}</a>']
        last = m.end()
    return "".join([*out, html.escape(text[last:])])


async def _page(request: web.Request) -> web.Response:
    catcher: MailCatcher = request.app[_CATCHER]
    items = []
    for n, message in enumerate(reversed(catcher.messages), 1):
        items.append(
            f"<article><h2>{html.escape(str(message['Subject']))}</h2>"
            f"<p>À {html.escape(str(message['To']))}, le {html.escape(str(message['Date']))}</p>"
            f"<pre id=\"courriel-{n}\">{_linked(_body(message))}</pre></article>")
    body = "\n".join(items) or "<p>Aucun courriel reçu pour l'instant.</p>"
    text = (f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>Courriels reçus (démonstration)</title></head>'
            f"<body><main><h1>Courriels reçus ({len(catcher.messages)})</h1>{body}</main></body></html>")
    return web.Response(text=text, content_type="text/html", headers={
        "Content-Security-Policy": "default-src 'none'; form-action 'none'; frame-ancestors 'none'",
        "Cache-Control": "no-store"})


_CATCHER = web.AppKey("mail_catcher", MailCatcher)


async def start_mailbox(*, host: str = "127.0.0.1", smtp_port: int = 0, web_port: int = 0,
                        maildir: Path | None = None) -> tuple[MailCatcher, web.AppRunner, str]:
    """The SMTP catch-all and its page; returns the catcher (its `port` is the SMTP port), the page's runner and
    URL."""
    catcher = MailCatcher(maildir)
    await catcher.start(host, smtp_port)
    app = web.Application()
    app[_CATCHER] = catcher
    app.router.add_get("/", _page)

    async def stop_smtp(_: web.Application) -> None:
        await catcher.stop()

    app.on_cleanup.append(stop_smtp)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, web_port)
    await site.start()
    port = runner.addresses[0][1]
    return catcher, runner, f"http://{host}:{port}/"

