"""The broker behind PgBouncer's session pooling, as administrations often run PostgreSQL: it connects, migrates,
and a signed exchange is claimed, released and logged through it, with the settings of its sessions in force.
PgBouncer refuses startup parameters it does not track, so the broker sets them once each session is open
(broker/storage/db.py); before, `jit` and the claims pool's `synchronous_commit` made every connection fail."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.storage import db
from tests.broker_harness import broker_config, exchange_body, start_broker
from tests.deploy.test_nginx import free_port
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

pytestmark = pytest.mark.skipif(not Path(PGBOUNCER).exists(),
                                reason="PgBouncer is not installed (`make test` installs Debian's pgbouncer)")


def as_user(database_url: str) -> list[str]:
    """PgBouncer will not run as root: it switches to the user who owns the server's socket directory (the
    embedded server's, when the tests use it), else to the server's own user, which exists wherever it is installed."""
    if os.geteuid() != 0:
        return []
    socket_dir = parse_qs(urlsplit(database_url).query).get("host", [""])[0]
    owner = pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name if socket_dir.startswith("/") else "postgres"
    return ["-u", owner]


def pgbouncer_ini(directory: Path, database_url: str, port: int) -> tuple[Path, str]:
    """A session-pooling PgBouncer in front of the test database's server, and the URL to reach it."""
    url = urlsplit(database_url)
    host = parse_qs(url.query).get("host", [url.hostname or "127.0.0.1"])[0]
    server_port = parse_qs(url.query).get("port", [str(url.port or 5432)])[0]
    user, dbname = url.username or "postgres", url.path.lstrip("/")
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(f"""
[databases]
{dbname} = host={host} port={server_port} dbname={dbname}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = session
""")
    return ini, f"postgresql://{user}@127.0.0.1:{port}/{dbname}"


async def test_a_signed_exchange_through_pgbouncer_session_pooling(
        database_url: str, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    ini, bouncer_url = pgbouncer_ini(tmp_path, database_url, port := free_port())
    log = tmp_path / "pgbouncer.log"
    with log.open("wb") as stderr:  # opened here, so PgBouncer's user need not reach tmp_path
        bouncer = await asyncio.create_subprocess_exec(PGBOUNCER, *as_user(database_url), str(ini), stderr=stderr)
    try:
        for _ in range(200):
            # its own line, not just an open port: another process may have taken the port meanwhile
            if f"listening on 127.0.0.1:{port}" in log.read_text(errors="replace"):
                break
            if bouncer.returncode is not None:
                pytest.fail(f"pgbouncer exited: {log.read_text(errors='replace')}")
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"pgbouncer did not listen within 10 s: {log.read_text(errors='replace')}")
        sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
        paris = consumer()
        config = broker_config(tmp_path, bouncer_url,
                               registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/")))
        broker = await start_broker(aiohttp_client, config, paris)
        answer = await broker.exchange(exchange_body())
        assert answer.status == 200, answer.body
        await broker.verify(answer)
        state = broker.state()
        assert await state.pool.fetchval("SHOW jit") == "off"
        assert await state.claims_pool.fetchval("SHOW synchronous_commit") == "off"
        assert await state.pool.fetchval("SHOW synchronous_commit") == "on"
        conn = await db.connect(bouncer_url)
        try:
            assert await conn.fetchval("SHOW jit") == "off"
        finally:
            await conn.close()
    finally:
        if bouncer.returncode is None:
            bouncer.terminate()
        await bouncer.wait()
    # the entry was committed through PgBouncer, read here directly from the server
    direct = await asyncpg.connect(database_url)
    try:
        logged = await direct.fetch("SELECT outcome, consumer FROM access_log")
    finally:
        await direct.close()
    assert [(r["outcome"], r["consumer"]) for r in logged] == [("released", paris.siret)]
