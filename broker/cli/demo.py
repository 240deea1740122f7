"""`python -m broker demo`: the broker, the sandbox providers and a demo registry, on the embedded database.

Everything is real: the sandboxes are HTTP servers in their upstream formats (API Particulier, reached by the
`api_particulier` adapter; a DGFiP-style provider, reached by a declarative `http_json` adapter; API Entreprise,
reached by the `api_entreprise` adapter for a préfecture's business datasets), the broker calls
them over HTTP, and the printed commands sign their requests with a freshly generated consumer key registered in
the demo registry. Citizens log in at /citizen/login through the sandbox FranceConnect OP (a real OpenID Provider
whose users are the synthetic citizens), unless DLNUF_OIDC_* names another one. Citizens' notification mails go
to a catch-all mailbox (`adapters/sandbox/mailbox.py`, a real SMTP server) with a page listing them and a Maildir,
unless DLNUF_SMTP_* names a relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import asyncpg
from aiohttp import web

from adapters.sandbox import api_entreprise, dgfip
from adapters.sandbox.api_particulier import FC_CHECK, start_sandbox
from adapters.sandbox.franceconnect import ClientConfig, start_franceconnect
from adapters.sandbox.mailbox import start_mailbox
from broker.app import ADMIN_DSN, create_app
from broker.config import CALLBACK_PATH, LOGGED_OUT_PATH, CitizenLoginConfig, Config, MailConfig
from broker.gateway.app import Trust, create_gateway_app
from broker.gateway.app import start as start_gateway
from broker.gateway.config import load_gateway_config
from broker.service.runner import BrokerRunner
from broker.signing.keys import PrivateKey, generate_private_key, private_key_from_jwk
from examples.cantine import app as cantine

TOKEN_ENV = "DLNUF_DEMO_API_PARTICULIER_TOKEN"  # noqa: S105 - the name of a variable, not a secret
DGFIP_KEY_ENV = "DLNUF_DEMO_DGFIP_KEY"
ENTREPRISE_TOKEN_ENV = "DLNUF_DEMO_API_ENTREPRISE_TOKEN"  # noqa: S105 - the name of a variable, not a secret
OIDC_SECRET_ENV = "DLNUF_DEMO_OIDC_CLIENT_SECRET"  # noqa: S105 - the name of a variable, not a secret
OIDC_CLIENT_ID = "dlnuf-demo"
CONSUMER_SIRET = "21750001600019"
CANTINE_SIRET = "21690123100011"
PERISCOLAIRE_SIRET = "21130055300016"
PREFECTURE_SIRET = "17690001700011"
# The sandbox's company (adapters/sandbox/businesses.json), and a call context as a public tender would give it.
DEMO_COMPANY = {"siren": "912345675"}
DEMO_CONTEXT, DEMO_OBJECT = "Marchés publics", "Marché 2026-127 : menuiseries de l'école"
PERISCOLAIRE_SERVER = resources.files("examples").joinpath("periscolaire", "server.mjs")
GATEWAY_DATABASE = "dlnuf_demo_gateway"
DEMO_MAIL_FROM = "Mes données (démonstration) <ne-pas-repondre@dlnuf.localhost>"
DEMO_SUBJECT = {"pivot_identity": {
    "family_name": "Dupont", "given_name": "Marie Claire", "birthdate": "1985-03-14",
    "gender": "female", "birthplace": "75114", "birthcountry": "99100",
}}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the broker with sandbox providers and a demo registry")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--sandbox-port", type=int, default=0, help="API Particulier sandbox port (0: any free one)")
    p.add_argument("--dgfip-port", type=int, default=0, help="DGFiP sandbox port (0: any free one)")
    p.add_argument("--entreprise-port", type=int, default=0, help="API Entreprise sandbox port (0: any free one)")
    p.add_argument("--franceconnect-port", type=int, default=0,
                   help="sandbox FranceConnect OP port (0: any free one)")
    p.add_argument("--demarche-port", type=int, default=8081,
                   help="the sample démarche's port (restauration scolaire; 0: any free one)")
    p.add_argument("--periscolaire-port", type=int, default=8082,
                   help="the Node.js démarche's port (accueil périscolaire, through the gateway; 0: any free one)")
    p.add_argument("--gateway-port", type=int, default=8090,
                   help="the consumer gateway's port, on loopback (the Node.js démarche's way to the broker)")
    p.add_argument("--mailbox-port", type=int, default=0,
                   help="the page of the mails citizens receive (catch-all SMTP server; 0: any free one)")


def consumer_key(path: Path, kid: str = "demo-commune-paris") -> PrivateKey:
    if path.exists():
        return private_key_from_jwk(json.loads(path.read_text("utf-8")))
    key = generate_private_key("ed25519", kid=kid)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x") as f:
        path.chmod(0o600)
        json.dump(key.to_jwk(), f, indent=2)
    return key


def _toml_inline(jwk: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in jwk.items() if k != "kid") + " }"


def write_registry(path: Path, key: PrivateKey, sandbox_url: str, dgfip_url: str, *, cantine_key: PrivateKey,
                   cantine_url: str, periscolaire_key: PrivateKey, periscolaire_url: str,
                   prefecture_key: PrivateKey | None = None, entreprise_url: str = "http://127.0.0.1:9") -> None:
    template = Template(resources.files("broker.cli").joinpath("demo_registry.toml.tmpl").read_text("utf-8"))
    # Callers that do not ask businesses still get a valid registry: the préfecture then has a key nobody holds.
    prefecture_key = prefecture_key or generate_private_key("ed25519", kid="demo-prefecture-rhone")
    path.write_text(template.substitute(kid=key.kid, jwk=_toml_inline(key.public_jwk()), sandbox_url=sandbox_url,
                                        token_env=TOKEN_ENV, dgfip_url=dgfip_url, dgfip_key_env=DGFIP_KEY_ENV,
                                        cantine_kid=cantine_key.kid, cantine_jwk=_toml_inline(cantine_key.public_jwk()),
                                        cantine_url=cantine_url, periscolaire_kid=periscolaire_key.kid,
                                        periscolaire_jwk=_toml_inline(periscolaire_key.public_jwk()),
                                        periscolaire_url=periscolaire_url, prefecture_kid=prefecture_key.kid,
                                        prefecture_jwk=_toml_inline(prefecture_key.public_jwk()),
                                        entreprise_url=entreprise_url, entreprise_token_env=ENTREPRISE_TOKEN_ENV))


def request_command(base_url: str, key_file: Path, *, dataset: str = "quotient_familial",
                    purpose: str = "tarification-restauration-scolaire",
                    fields: str = "quotient_familial,enfants", recipient: str = CONSUMER_SIRET,
                    subject: dict[str, Any] | None = None, context: tuple[str, str] | None = None) -> str:
    # this interpreter's absolute path (the virtualenv's): the command runs as printed in a fresh terminal
    args = [sys.executable, "-m", "broker", "request", "--url", base_url, "--key", str(key_file),
            "--dataset", dataset, "--purpose", purpose,
            "--recipient", recipient, "--fields", fields,
            "--subject", json.dumps(subject or DEMO_SUBJECT, ensure_ascii=False)]
    if context is not None:
        args += ["--context", context[0], "--object", context[1]]
    return shlex.join(args)


def _free_port(host: str, port: int) -> int:
    if port:
        return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        free: int = sock.getsockname()[1]
        return free


async def _gateway(config: Config, app: web.Application, key: PrivateKey, base_url: str, port: int,
                   ) -> tuple[web.AppRunner, str]:
    """The consumer gateway of the Node démarche's organisation, its record in a database of its own on the demo's
    PostgreSQL."""
    dsn = app[ADMIN_DSN]  # the broker's own role may not create databases
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", GATEWAY_DATABASE):
            await conn.execute(f'CREATE DATABASE "{GATEWAY_DATABASE}"')
    finally:
        await conn.close()
    base, sep, query = dsn.partition("?")
    record_url = base.rsplit("/", 1)[0] + "/" + GATEWAY_DATABASE + sep + query
    gateway_config = load_gateway_config(env={}, broker_url=base_url, siret=PERISCOLAIRE_SIRET,
                                         key_file=config.state_dir / "demo" / "consumer-ville-marseille.jwk",
                                         database_url=record_url, state_dir=config.state_dir / "demo" / "gateway",
                                         host=config.host, port=port, log_format=config.log_format)
    return await start_gateway(create_gateway_app(gateway_config, Trust(key)), gateway_config)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound before anything is configured, so a port of 0 becomes a known address for the registry and URLs."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def _run(config: Config, sandbox_port: int, dgfip_port: int, franceconnect_port: int,
               cantine_port: int, periscolaire_port: int, gateway_port: int, mailbox_port: int = 0,
               entreprise_port: int = 0) -> None:
    # SIGINT and SIGTERM only ask to stop: the start-up finishes (an embedded PostgreSQL half started could not
    # be stopped), then everything started is stopped, in reverse order, whatever stopped the demo.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as started:
        await _start(config, started, sandbox_port, dgfip_port, franceconnect_port, cantine_port, periscolaire_port,
                     gateway_port, mailbox_port, entreprise_port)
        await stop.wait()
        print("stopping the demo", file=sys.stderr, flush=True)


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()


async def _start(config: Config, started: contextlib.AsyncExitStack, sandbox_port: int, dgfip_port: int,
                 franceconnect_port: int, cantine_port: int, periscolaire_port: int, gateway_port: int,
                 mailbox_port: int, entreprise_port: int = 0) -> None:
    demo_dir = config.state_dir / "demo"
    key_file = demo_dir / "consumer-commune-paris.jwk"
    key = consumer_key(key_file)
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(24)
    os.environ[DGFIP_KEY_ENV] = secrets.token_urlsafe(24)
    sandbox_runner, sandbox_url = await start_sandbox(os.environ[TOKEN_ENV], port=sandbox_port)
    started.push_async_callback(sandbox_runner.cleanup)
    dgfip_runner, dgfip_url = await dgfip.start_sandbox(os.environ[DGFIP_KEY_ENV], port=dgfip_port)
    started.push_async_callback(dgfip_runner.cleanup)
    os.environ[ENTREPRISE_TOKEN_ENV] = secrets.token_urlsafe(24)
    entreprise_runner, entreprise_url = await api_entreprise.start_sandbox(os.environ[ENTREPRISE_TOKEN_ENV],
                                                                           port=entreprise_port)
    started.push_async_callback(entreprise_runner.cleanup)
    prefecture_file = demo_dir / "consumer-prefecture-rhone.jwk"
    prefecture_key = consumer_key(prefecture_file, kid="demo-prefecture-rhone")
    # the démarche's address goes in the registry (its OAuth redirect URI), the broker's in every URL printed
    cantine_key = consumer_key(demo_dir / "consumer-ville-lyon-cantine.jwk", kid="demo-ville-lyon-cantine")
    cantine_sock = started.enter_context(_listening_socket(config.host, cantine_port))
    cantine_url = f"http://{config.host}:{cantine_sock.getsockname()[1]}"
    periscolaire_key = consumer_key(demo_dir / "consumer-ville-marseille.jwk", kid="demo-ville-marseille-periscolaire")
    periscolaire_url = f"http://{config.host}:{_free_port(config.host, periscolaire_port)}"
    broker_sock = started.enter_context(_listening_socket(config.host, config.port))
    base_url = f"http://{config.host}:{broker_sock.getsockname()[1]}"
    registry_file = demo_dir / "registry.toml"
    write_registry(registry_file, key, sandbox_url, dgfip_url, cantine_key=cantine_key, cantine_url=cantine_url,
                   periscolaire_key=periscolaire_key, periscolaire_url=periscolaire_url,
                   prefecture_key=prefecture_key, entreprise_url=entreprise_url)
    login = config.citizen_login
    if login is None:
        # a FranceConnect configured in DLNUF_OIDC_* wins; otherwise the sandbox OP, with a fresh client secret
        os.environ[OIDC_SECRET_ENV] = secrets.token_urlsafe(32)
        client = ClientConfig(os.environ[OIDC_SECRET_ENV], [base_url + CALLBACK_PATH], [base_url + LOGGED_OUT_PATH],
                              name="DLNUF (démonstration)")
        fc_runner, fc_url = await start_franceconnect({OIDC_CLIENT_ID: client}, port=franceconnect_port)
        started.push_async_callback(fc_runner.cleanup)
        # API Particulier's FranceConnect-mode endpoints check their bearer at this OP, as upstream at FranceConnect
        sandbox_runner.app[FC_CHECK].userinfo = fc_url.rstrip("/") + "/userinfo"
        login = CitizenLoginConfig(issuer=fc_url, client_id=OIDC_CLIENT_ID, client_secret_env=OIDC_SECRET_ENV,
                                   redirect_uri=base_url + CALLBACK_PATH,
                                   post_logout_redirect_uri=base_url + LOGGED_OUT_PATH, session_lifetime=1800.0,
                                   cookie_secure=False)
    op_note = "from DLNUF_OIDC_ISSUER" if config.citizen_login else "sandbox FranceConnect, synthetic citizens"

    mail, mailbox_line = config.mail, "DLNUF_SMTP_HOST's relay"
    if mail is None:
        # a catch-all mailbox on the loopback stands for the citizens' mailboxes
        catcher, mailbox_runner, mailbox_url = await start_mailbox(
            host=config.host, web_port=mailbox_port, maildir=demo_dir / "mails")
        started.push_async_callback(mailbox_runner.cleanup)
        mail = MailConfig(host=config.host, port=catcher.port, security="none", username=None,
                          password_env="DLNUF_DEMO_UNUSED",  # noqa: S106 - a variable name; no login here
                          sender=DEMO_MAIL_FROM, public_url=config.public_url or base_url, timeout=5.0)
        mailbox_line = f"{mailbox_url}   (and the Maildir {demo_dir / 'mails'}; SMTP on port {catcher.port})"
    # the demo writes its registry itself, so it may remove what an older demo registry had
    app = create_app(replace(config, registry_file=registry_file, citizen_login=login, registry_prune=True,
                             public_url=config.public_url or base_url, mail=mail))
    runner = BrokerRunner(app, access_log=None)
    started.push_async_callback(runner.cleanup)  # also stops the embedded PostgreSQL, even after a failed start
    await runner.setup()
    await web.SockSite(runner, broker_sock).start()
    cantine_runner = web.AppRunner(cantine.create_app(broker_url=base_url, key=cantine_key, siret=CANTINE_SIRET,
                                                      base_url=cantine_url), access_log=None)
    started.push_async_callback(cantine_runner.cleanup)
    await cantine_runner.setup()
    await web.SockSite(cantine_runner, cantine_sock).start()
    gateway_runner, gateway_url = await _gateway(config, app, periscolaire_key, base_url, gateway_port)
    started.push_async_callback(gateway_runner.cleanup)
    node = shutil.which("node")
    if node is not None:
        node_proc = await asyncio.create_subprocess_exec(node, str(PERISCOLAIRE_SERVER), env={
            "PATH": os.environ.get("PATH", ""), "HOST": config.host, "PORT": periscolaire_url.rsplit(":", 1)[1],
            "BASE_URL": periscolaire_url, "BROKER_URL": base_url, "GATEWAY_URL": gateway_url,
            "SIRET": PERISCOLAIRE_SIRET})
        started.push_async_callback(_stop_process, node_proc)
        periscolaire_line = f"{periscolaire_url}/   (Ville de Marseille, accueil périscolaire, in Node.js)"
    else:
        periscolaire_line = "not started: Node.js is not installed (apt-get install nodejs)"
    print(f"""
DLNUF demo is running.
  broker            {base_url}   (OpenAPI: {base_url}/openapi.json, JWKS: {base_url}/.well-known/jwks.json)
  API Particulier   {sandbox_url}   (sandbox, synthetic citizens)
  DGFiP             {dgfip_url}   (sandbox, revenu fiscal de référence, via a declarative http_json adapter)
  API Entreprise    {entreprise_url}   (sandbox, synthetic businesses and associations)
  citizen login     {base_url}/citizen/login   (OpenID Provider {login.issuer}: {op_note})
  citizens' mails   {mailbox_line}
  database          embedded PostgreSQL in {config.state_dir / 'pgdata'}
  registry          {registry_file}
  consumer key      {key_file}   (Commune de Paris, kid {key.kid})

Send a signed request for a citizen's quotient familial (from another terminal, as printed):

  {request_command(base_url, key_file)}

and for her revenu fiscal de référence, from the DGFiP sandbox:

  {request_command(base_url, key_file, dataset="revenu_fiscal_reference", purpose="tarification-sociale",
                   fields="revenu_fiscal_reference,nombre_parts,annee_revenus")}

A préfecture checking that a company bidding for a public tender is up to date with its social contributions
(API Entreprise's attestation de vigilance; context and object are the call context API Entreprise requires):

  {request_command(base_url, prefecture_file, dataset="attestation_vigilance", purpose="marches-publics",
                   fields="entity_status,date_fin_validite", recipient=PREFECTURE_SIRET, subject=DEMO_COMPANY,
                   context=(DEMO_CONTEXT, DEMO_OBJECT))}

Catalogue of what can be asked: {base_url}/v1/catalogue

A démarche that pre-fills its form with the parent's consent (« Remplir avec mes données »):

  {cantine_url}/   (Ville de Lyon, inscription à la restauration scolaire; log in as any synthetic citizen)

and what a citizen sees of it all: {base_url}/citizen/ (« Être prévenu·e » sends the mails to the mailbox above)

The same, by a démarche that writes no crypto: it speaks plain HTTP to the consumer gateway on {gateway_url},
which holds Marseille's key, signs, verifies the broker's answers and keeps a record (docs/gateway.md):

  {periscolaire_line}

Ctrl-C (or SIGTERM) stops everything, the embedded PostgreSQL included.
""", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, config: Config) -> int:
    asyncio.run(_run(config, args.sandbox_port, args.dgfip_port, args.franceconnect_port, args.demarche_port,
                     args.periscolaire_port, args.gateway_port, args.mailbox_port, args.entreprise_port))
    return 0
