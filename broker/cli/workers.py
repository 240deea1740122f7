"""`serve --workers N`: N broker processes on one port (SO_REUSEPORT), sharing one database.

One event loop uses one core; the broker is built for several processes (nonces, consents, the registry and the
log are coordinated through PostgreSQL), so the way to use a machine's cores is more processes. The parent prepares
what must happen once (the embedded PostgreSQL, migrations, the registry file), then starts the workers and stops
them all when it is told to stop or when one dies. A stopping worker finishes the requests in flight and its last
log round, and ignores the same signal sent again (broker/service/runner.py): the whole process group may get it,
then the parent passes it on. The parent exits 0 only when every worker did.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client.multiprocess import mark_process_dead

from broker import registry
from broker.config import Config
from broker.observability.logs import configure
from broker.observability.metrics import MULTIPROCESS_DIR
from broker.storage import db, roles

log = structlog.get_logger(__name__)

# How long a stopping worker may take: aiohttp's default shutdown_timeout for the requests in flight (60 s), then
# the cleanup contexts, the last log round's 5 s included. Under systemd's default TimeoutStopSec (90 s).
STOP_GRACE = 75.0


def use_event_loop(name: str) -> None:
    """Select the event loop before aiohttp creates one; a missing uvloop fails loudly rather than silently."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise SystemExit("DLNUF_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)") from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _worker(config: Config) -> None:
    configure(config.log_format)
    use_event_loop(config.event_loop)
    from broker.app import create_app
    from broker.service.runner import serve

    asyncio.run(serve(create_app(config), host=config.host, port=config.port, reuse_port=True))


async def _prepare(config: Config) -> None:
    assert config.database_url is not None
    conn = await db.connect(config.admin_database_url or config.database_url)
    try:
        await db.migrate(conn)
        if config.registry_file is not None:
            report = await registry.apply(conn, registry.parse_registry(
                config.registry_file.read_text("utf-8"), str(config.registry_file)), prune=config.registry_prune)
            log.info("registry applied", report=str(report))
    finally:
        await conn.close()


def _metrics_directory(config: Config) -> tuple[Path, bool]:
    """Where the workers count (PROMETHEUS_MULTIPROC_DIR, or a directory of ours), emptied: a scrape must not sum
    the files of processes from a previous run. True when it is ours to remove."""
    given = os.environ.get(MULTIPROCESS_DIR)
    where = Path(given) if given else Path(tempfile.mkdtemp(prefix="dlnuf-metrics-"))
    where.mkdir(parents=True, exist_ok=True)
    for stale in where.glob("*.db"):
        stale.unlink()
    return where, not given


def serve_workers(config: Config, workers: int) -> int:
    metrics_dir, ours = _metrics_directory(config)
    # inherited by the spawned workers, read by prometheus_client when they import it
    os.environ[MULTIPROCESS_DIR] = str(metrics_dir)
    try:
        return _serve_workers(config, workers, metrics_dir)
    finally:
        if ours:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_workers(config: Config, workers: int, metrics_dir: Path) -> int:
    embedded = None
    if config.database_url is None:
        embedded = db.EmbeddedPostgres(config.state_dir / "pgdata")
        config = replace(config, database_url=embedded.dsn())
    try:
        asyncio.run(_prepare(config))
        if embedded is not None:
            # the workers serve as the least-privilege role, as one embedded process does (broker/app.py)
            config = replace(config, database_url=asyncio.run(roles.embedded_broker_dsn(embedded.dsn())))
        # done once here: the workers neither migrate concurrently nor each re-apply the registry file
        config = replace(config, registry_file=None)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(config,), name=f"dlnuf-worker-{i}") for i in range(workers)]
        for p in procs:
            p.start()
        print(f"======== {workers} workers on http://{config.host}:{config.port} ========", file=sys.stderr)

        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping and all(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.2)
        dead = [p.name for p in procs if not p.is_alive()]
        if dead and not stopping:
            log.error("a worker died: stopping the others", workers=dead)
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                log.error("a worker did not stop in time: killed", worker=p.name, grace=STOP_GRACE)
                p.kill()
                p.join(timeout=5)
            if p.pid is not None:
                # its live-only gauges (the pid series) leave the scrape with it; its counters stay summed
                mark_process_dead(p.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
        unclean = {p.name: p.exitcode for p in procs if p.exitcode != 0}
        if unclean and stopping:
            log.error("workers did not stop cleanly", exit_codes=unclean)
        return 0 if stopping and not unclean else 1
    finally:
        if embedded is not None:
            embedded.stop()
