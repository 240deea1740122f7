"""A consent-flow stack for tests: the API Particulier sandbox, the sandbox FranceConnect OP, a broker with citizen
login, consumers with consent-based habilitations, and a scripted browser that follows real redirects."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from adapters.sandbox.api_particulier import FC_CHECK, start_sandbox
from adapters.sandbox.franceconnect import ClientConfig, start_franceconnect
from broker.app import create_app
from broker.config import CitizenLoginConfig, MailConfig
from broker.consumer.client import BrokerClient
from tests.adapters.test_franceconnect_sandbox import parse_forms, pick_citizen
from tests.broker_harness import broker_config
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml

OIDC_CLIENT = "dlnuf-broker"
OIDC_SECRET = "secret-du-broker-pour-les-tests-de-consentement"
OIDC_SECRET_ENV = "DLNUF_TEST_OIDC_CLIENT_SECRET"
CALLBACK = "http://127.0.0.1:9/demarche/retour"  # never contacted: the browser stops at the consumer's door
MAIL_FROM = "Mes données <ne-pas-repondre@dlnuf.test>"
LYON = "21690123100011"
PARIS = "21750001600019"


@dataclass
class Arrival:
    """Where the browser was sent back to the consumer, with the query it carried."""

    url: str
    params: dict[str, str]


@dataclass
class ConsentStack:
    broker: str
    issuer: str
    app: web.Application
    database_url: str
    lyon: Consumer
    paris: Consumer
    login: CitizenLoginConfig
    callback: str = CALLBACK
    """The consumers' registered redirect URI."""
    client_ssl: ssl.SSLContext | None = None
    """What clients trust when the broker runs on HTTPS (`start(tls=...)`)."""

    def browser(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     connector=aiohttp.TCPConnector(ssl=self.client_ssl) if self.client_ssl else None)

    def client(self, who: Consumer | None = None) -> BrokerClient:
        c = who or self.lyon
        return BrokerClient(self.broker, key=c.key, client_id=c.siret, ssl_context=self.client_ssl)

    async def walk(self, browser: aiohttp.ClientSession, url: str, *, citizen: str = "dupont-marie-claire",
                   decision: str = "accept", untick: tuple[str, ...] = (), stop_at: str = CALLBACK,
                   at_the_op: str = "accept") -> Arrival:
        """Follow redirects as a browser does; log in at the OP (or cancel there: `at_the_op="cancel"`) and answer
        the consent screen when met; stop at the consumer's redirect URI."""
        method, data = "GET", None
        for _ in range(20):
            async with browser.request(method, url, data=data, allow_redirects=False) as resp:
                body = await resp.text()
                status, location = resp.status, resp.headers.get("Location")
                here = resp.url
            method, data = "GET", None
            if status in (302, 303):
                assert location is not None
                url = str(here.join(URL(location)))
                if url.startswith(stop_at):
                    return Arrival(url, {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()})
                continue
            assert status == 200, f"{status} at {here}: {body[:500]}"
            if str(here).startswith(self.issuer + "/authorize"):
                action, form = pick_citizen(body, citizen, at_the_op)
                method, url, data = "POST", str(here.join(URL(action))), form
                continue
            if "/oauth/consent/" in str(here):
                [form] = [f for f in parse_forms(body) if f.method == "post"]
                # each box is "<object>:<field path>"; `untick` names paths, for every object that asks them
                fields = [v for v in form.choices.get("fields", []) if v.split(":", 1)[1] not in untick]
                method, url = "POST", str(here.join(URL(form.action)))
                data = aiohttp.FormData([("csrf", form.fields["csrf"]), ("decision", decision),
                                         *[("fields", f) for f in fields]])
                continue
            raise AssertionError(f"unexpected page {here}: {body[:300]}")
        raise AssertionError("too many redirects")

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


StartConsentStack = Callable[..., Awaitable[ConsentStack]]

CONSENT_HABILITATIONS = ""


@pytest.fixture
async def start_consent_stack(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              ) -> AsyncIterator[StartConsentStack]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    monkeypatch.setenv(OIDC_SECRET_ENV, OIDC_SECRET)
    runners: list[web.AppRunner] = []

    async def start(*, basis: str = "consent", redirect_uri: str = CALLBACK, bases: Mapping[str, str] | None = None,
                    names: Mapping[str, str] | None = None,
                    extra_datasets: Mapping[str, tuple[str, ...]] | None = None, key_alg: str = "ed25519",
                    tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None, smtp_port: int | None = None,
                    **settings: Any) -> ConsentStack:
        """`basis` for both consumers' habilitations, or `bases[siret]` for those it names; `redirect_uri` is
        registered for both; `names` names the consumers in the registry (else "Commune <siret>"); `settings`
        overrides the broker's configuration (`oauth_require_par=True`...). `key_alg` is the consumers' key
        algorithm; `tls` (server context, client context) serves the broker on HTTPS; `smtp_port`: citizens'
        notification mails go to an SMTP server on that loopback port."""
        sandbox_runner, sandbox_url = await start_sandbox(SANDBOX_TOKEN, slow_delay=2.0)
        runners.append(sandbox_runner)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        broker = f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
        clients = {OIDC_CLIENT: ClientConfig(OIDC_SECRET, [broker + "/citizen/callback"],
                                             [broker + "/citizen/logged-out"], name="DLNUF")}
        op_runner, issuer = await start_franceconnect(clients, host="127.0.0.2")
        runners.append(op_runner)
        # the API Particulier sandbox checks FranceConnect-mode bearers at this OP, as upstream does at FranceConnect
        sandbox_runner.app[FC_CHECK].userinfo = issuer.rstrip("/") + "/userinfo"
        login = CitizenLoginConfig(issuer=issuer, client_id=OIDC_CLIENT, client_secret_env=OIDC_SECRET_ENV,
                                   redirect_uri=broker + "/citizen/callback",
                                   post_logout_redirect_uri=broker + "/citizen/logged-out", session_lifetime=1800.0,
                                   cookie_secure=tls is not None)
        lyon, paris = consumer(LYON, alg=key_alg), consumer(PARIS, alg=key_alg)
        text = registry_toml([lyon, paris], provider_url=sandbox_url, basis=basis, bases=bases, names=names,
                             redirect_uri=redirect_uri, extra_datasets=extra_datasets)
        mail = None if smtp_port is None else MailConfig(
            host="127.0.0.1", port=smtp_port, security="none", username=None, password_env="UNUSED",
            sender=MAIL_FROM, public_url=broker, timeout=2.0)
        config = broker_config(tmp_path, database_url, text, citizen_login=login, mail=mail, **settings)
        app = create_app(config)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock, ssl_context=tls[0] if tls else None).start()
        return ConsentStack(broker, issuer, app, database_url, lyon, paris, login, redirect_uri,
                            tls[1] if tls else None)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()
