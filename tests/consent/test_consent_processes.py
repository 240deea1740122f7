"""Revocation takes effect on every broker process at once: two real `python -m broker serve` processes behind one
public URL share a database; the citizen revokes on one, and the other refuses the very next exchange.

The issue asks for "within 1 s"; the broker does better by construction (every use of a consent is one atomic
UPDATE on the shared row, no cache to invalidate), so the test asserts the next request, not a duration."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from adapters.sandbox.api_particulier import start_sandbox
from adapters.sandbox.franceconnect import ClientConfig, start_franceconnect
from broker.consumer.client import BrokerClient
from broker.signing import messages
from tests.adapters.test_franceconnect_sandbox import parse_forms, pick_citizen
from tests.citizen.test_consent_flow import PROBLEM
from tests.consent_harness import CALLBACK, LYON, OIDC_CLIENT, OIDC_SECRET, OIDC_SECRET_ENV
from tests.factories import PURPOSE, QF_FIELDS, SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog_processes import _ready

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _exchange_on(port: int, public: str, key: object, token: str) -> aiohttp.ClientResponse | int:
    """Sign for the public URL (as behind a load balancer), deliver to one process."""
    body = json.dumps({"dataset": "quotient_familial", "purpose": PURPOSE, "recipient": LYON,
                       "fields": ["quotient_familial"]}).encode()
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    headers.update(messages.sign_request(method="POST", url=public + "/v1/exchanges", headers=headers, body=body,
                                        private_key=key))  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}/v1/exchanges", data=body,
                                                    headers=headers) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 200 or problem["type"] == PROBLEM + "legal-basis-refused", problem
        return resp.status


async def test_revoke_on_one_process_refused_on_the_other(database_url: str, tmp_path: Path) -> None:
    sandbox_runner, sandbox_url = await start_sandbox(SANDBOX_TOKEN)
    port_a, port_b = _free_port(), _free_port()
    public = f"http://127.0.0.1:{port_a}"  # the load balancer's address; process A happens to listen there
    op_runner, issuer = await start_franceconnect(
        {OIDC_CLIENT: ClientConfig(OIDC_SECRET, [public + "/citizen/callback"], [public + "/citizen/logged-out"])},
        host="127.0.0.2")
    lyon = consumer(LYON)
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_toml([lyon], provider_url=sandbox_url, basis="consent", redirect_uri=CALLBACK))
    env = {**os.environ, "DATABASE_URL": database_url, "DLNUF_STATE_DIR": str(tmp_path / "state"),
           "DLNUF_REGISTRY_FILE": str(registry), "DLNUF_LOG_FORMAT": "json", TOKEN_ENV: SANDBOX_TOKEN,
           "DLNUF_PUBLIC_URL": public, "DLNUF_OIDC_ISSUER": issuer, "DLNUF_OIDC_CLIENT_ID": OIDC_CLIENT,
           "DLNUF_OIDC_CLIENT_SECRET_ENV": OIDC_SECRET_ENV, OIDC_SECRET_ENV: OIDC_SECRET,
           "DLNUF_OIDC_REDIRECT_URI": public + "/citizen/callback"}
    procs = []
    logs = [(tmp_path / f"broker-{p}.log").open("w") for p in (port_a, port_b)]
    try:
        for port, log in zip((port_a, port_b), logs, strict=True):
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "broker", "serve", "--port", str(port), env=env, stdout=log, stderr=log,
                cwd=ROOT))
            await _ready(f"http://127.0.0.1:{port}", procs[-1])  # one at a time: the first applies migrations

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser, \
                BrokerClient(public, key=lyon.key, client_id=LYON) as client:
            # the citizen consents (periodic) through process A
            auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                                fields=QF_FIELDS, frequency="periodic")
            async with browser.get(auth.url) as resp:
                action, form = pick_citizen(await resp.text(), "dupont-marie-claire")
                picker = resp.url
            async with browser.post(picker.join(URL(action)), data=form) as resp:
                [consent_form] = [f for f in parse_forms(await resp.text()) if f.method == "post"]
                screen = resp.url
            data = aiohttp.FormData([("csrf", consent_form.fields["csrf"]), ("decision", "accept"),
                                     *[("fields", f) for f in consent_form.choices["fields"]]])
            async with browser.post(screen.join(URL(consent_form.action)), data=data,
                                    allow_redirects=False) as resp:
                location = resp.headers["Location"]
            code = dict(parse_qsl(location.split("?", 1)[1]))["code"]
            token = await client.exchange_code(code=code, code_verifier=auth.code_verifier, redirect_uri=CALLBACK)

            assert await _exchange_on(port_b, public, lyon.key, token.access_token) == 200

            async with browser.get(public + "/citizen/api/consents") as resp:
                [consent] = (await resp.json())["consents"]
            async with browser.get(public + "/citizen/") as resp:
                csrf = next(f.fields["csrf"] for f in parse_forms(await resp.text()) if "csrf" in f.fields)
            async with browser.post(f"{public}/citizen/api/consents/{consent['id']}/revoke",
                                    headers={"X-CSRF-Token": csrf}) as resp:
                assert resp.status == 200
            status = await _exchange_on(port_b, public, lyon.key, token.access_token)
        assert status == 403, "process B still served a revoked consent"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await proc.wait()
        for log in logs:
            log.close()
        await op_runner.cleanup()
        await sandbox_runner.cleanup()
