"""`python -m broker db shell`: psql on the database the broker uses, `DATABASE_URL` or the embedded one.

For the embedded PostgreSQL, the server is started for the session (or joined, when a broker or the demo on the
same state directory already runs it) and stopped after, like every other command; its own psql is used, so the
client always matches the server. Arguments after `--` go to psql (`db shell -- -c "SELECT 1"`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

from broker.config import Config, ConfigError
from broker.storage import db


def add_parser(db_sub: Any) -> None:
    shell = db_sub.add_parser("shell", help="open psql on the broker's database (DATABASE_URL, or the embedded one)")
    shell.add_argument("psql_args", nargs=argparse.REMAINDER,
                       help="arguments for psql, after `--` (e.g. -- -c 'SELECT count(*) FROM access_log')")


def _psql(embedded: bool) -> str:
    if embedded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning, as in broker.storage.db
            import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("psql")
    if found is None:
        raise ConfigError("psql is not installed (apt-get install postgresql-client)")
    return found


async def _shell(config: Config, psql_args: list[str]) -> int:
    psql = _psql(embedded=config.database_url is None)
    async with db.database_dsn(config.database_url, config.state_dir) as dsn:
        # psql reads the terminal itself; the embedded server stays up until it exits. Ctrl-C is psql's (it
        # cancels the query running): the process group gets it, and this process waits on.
        process = await asyncio.create_subprocess_exec(psql, dsn, *psql_args)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        try:
            return await process.wait()
        finally:
            loop.remove_signal_handler(signal.SIGINT)


def run(args: argparse.Namespace, config: Config) -> int:
    psql_args = list(args.psql_args)
    if psql_args[:1] == ["--"]:
        psql_args = psql_args[1:]
    return asyncio.run(_shell(config, psql_args))
