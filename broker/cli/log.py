"""`python -m broker log verify|prune|partitions`: audit the transparency log, remove entry bodies past their
retention, create the access log's monthly partitions.

`log verify` exits 0 when the whole log verifies, 1 with the list of findings otherwise, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg

from broker.cli import offline
from broker.config import Config
from broker.signing.keys import InvalidKey, PrivateKey, private_key_from_jwk
from broker.storage import db
from broker.tlog import log as tlog
from broker.tlog import partitions
from broker.tlog import verify as tlog_verify
from broker.tlog.checkpoint import CheckpointError, NoteVerifier, parse_verifier_key
from broker.tlog.witness import WitnessError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("log", help="transparency log commands")
    log_sub = p.add_subparsers(dest="log_command", required=True)

    v = log_sub.add_parser("verify", help="recompute the whole log and check it against its signed checkpoints")
    where = v.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running broker's base URL (entries need --key, an auditor's key)")
    where.add_argument("--database-url", help="the broker's database (default: DATABASE_URL, or the embedded one)")
    v.add_argument("--key", type=Path, help="the auditor organisation's private JWK, to read entries over --url")
    v.add_argument("--vkey", action="append", default=[],
                   help="a trusted note verifier key <name>+<id>+<key> (repeat for rotated keys); default: the "
                        "broker's own key file with --database-url, the key the broker serves with --url")
    v.add_argument("--origin", help="the log's origin (default: the verifier key's name)")
    v.add_argument("--checkpoint", action="append", default=[], type=Path,
                   help="a checkpoint kept from an earlier run: the log must still extend it (repeatable)")
    v.add_argument("--witness", action="append", default=[],
                   help="a witness's cosignature key: its cosignatures are checked (repeatable)")
    v.add_argument("--quorum", type=int, default=None,
                   help="how many --witness keys must have cosigned a verified checkpoint (default: all)")
    v.add_argument("--state", type=Path,
                   help="incremental: start from the tree this file records (if it exists), and record the newly "
                        "verified tree in it when everything verifies")
    v.add_argument("--full", action="store_true", help="with --state: verify everything anyway, then record")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    bar = v.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", help="show the progress bar even if stderr is no terminal")
    bar.add_argument("--no-progress", action="store_true")

    pr = log_sub.add_parser("prune", help="remove entry bodies past their habilitation's retention (leaves kept)")
    pr.add_argument("--database-url", help="the broker's database as its owner role (default: "
                    "DLNUF_ADMIN_DATABASE_URL, else DATABASE_URL, or the embedded one)")
    pr.add_argument("--dry-run", action="store_true", help="list what would be pruned, change nothing")
    pa = log_sub.add_parser("partitions", help="create the access log's coming monthly partitions, move rows out "
                            "of the default partition, list them (as the owner role; run it from a timer)")
    pa.add_argument("--database-url", help="the broker's database as its owner role (default: "
                    "DLNUF_ADMIN_DATABASE_URL, else DATABASE_URL, or the embedded one)")
    pa.add_argument("--ahead", type=int, default=partitions.MONTHS_AHEAD,
                    help="months after the current one to create (default: %(default)s)")
    offline.add_parsers(log_sub)


class ProgressBar:
    """A one-line bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, *, width: int = 40) -> None:
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn < 0.1:
            return
        self._drawn = now
        filled = self.width * done // max(total, 1)
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\r[{'#' * filled}{' ' * (self.width - filled)}] {done}/{total} entries "
                          f"({100 * done // max(total, 1)}%, {rate:,.0f}/s)")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _database(url: str | None, config: Config) -> AbstractAsyncContextManager[str]:
    """The database given, the configured one, or the embedded one (started for the command, stopped after)."""
    return db.database_dsn(url or config.database_url, config.state_dir)


def _trusted(args: argparse.Namespace) -> list[NoteVerifier]:
    return [parse_verifier_key(k) for k in args.vkey]


def _witness_policy(args: argparse.Namespace) -> dict[str, Any]:
    return {"witnesses": args.witness, "quorum": len(args.witness) if args.quorum is None else args.quorum}


def _resume(args: argparse.Namespace) -> tlog_verify.Resume | None:
    if args.state is None or args.full or not args.state.exists():
        return None
    try:
        return tlog_verify.Resume.from_json(json.loads(args.state.read_text("utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise tlog_verify.SourceError(f"{args.state} is not a verification state: {exc}") from None


def _record(args: argparse.Namespace, report: tlog_verify.Report) -> None:
    if args.state is None or report.resume is None:
        return
    tmp = args.state.with_name(args.state.name + ".tmp")
    tmp.write_text(json.dumps(report.resume.to_json(), indent=2) + "\n", "utf-8")
    tmp.replace(args.state)  # whole or not at all


async def _verify_database(args: argparse.Namespace, config: Config, progress: tlog_verify.Progress | None,
                           held: list[str]) -> tlog_verify.Report:
    verifiers = _trusted(args)
    if not verifiers:
        signer = tlog.load_or_create_note_key(config.log_key_file, config.log_origin) \
            if config.log_key_file.exists() else None
        if signer is None:
            raise tlog_verify.SourceError(f"no --vkey, and no note key at {config.log_key_file}")
        verifiers = [signer.verifier]
        print(f"# trusting the broker's note key {signer.verifier.vkey()}", file=sys.stderr)
    origin = args.origin or verifiers[0].name
    async with _database(args.database_url, config) as dsn:
        try:
            conn = await db.connect(dsn)
        except db.DB_ERRORS as exc:
            raise tlog_verify.SourceError(f"cannot connect to {db.describe(dsn)}: {exc}") from None
        try:
            source = tlog_verify.DatabaseSource(conn)
            await source.check_readable()
            # One snapshot: brokers may keep appending while the auditor reads.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await tlog_verify.verify_log(
                    source, verifiers, origin=origin,
                    max_merge_delay=config.log_max_merge_delay, held_checkpoints=held, progress=progress,
                    default_retention=config.log_retention, now=datetime.now(UTC), resume=_resume(args),
                    **_witness_policy(args))
        finally:
            await conn.close()


async def _verify_url(args: argparse.Namespace, config: Config, progress: tlog_verify.Progress | None,
                      held: list[str]) -> tlog_verify.Report:
    key: PrivateKey | None = None
    if args.key is not None:
        try:
            key = private_key_from_jwk(json.loads(args.key.read_text("utf-8")))
        except (OSError, ValueError, InvalidKey) as exc:
            raise tlog_verify.SourceError(f"cannot load the key {args.key}: {exc}") from None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        source = tlog_verify.HttpSource(session, args.url, key)
        verifiers = _trusted(args)
        if not verifiers:
            served = str((await source.info()).get("verifier_key"))
            verifiers = [parse_verifier_key(served)]
            print(f"# trusting the key the broker serves, {served}: pin it with --vkey", file=sys.stderr)
        return await tlog_verify.verify_log(source, verifiers, origin=args.origin or verifiers[0].name,
                                            held_checkpoints=held, progress=progress,
                                            default_retention=config.log_retention, now=datetime.now(UTC),
                                            resume=_resume(args), **_witness_policy(args))


def _verify(args: argparse.Namespace, config: Config) -> int:
    progress = None
    if args.progress or (sys.stderr.isatty() and not args.no_progress):
        progress = ProgressBar(sys.stderr)
    try:
        held = [p.read_text("utf-8") for p in args.checkpoint]
        if args.url:
            report = asyncio.run(_verify_url(args, config, progress, held))
        else:
            report = asyncio.run(_verify_database(args, config, progress, held))
    except (OSError, ValueError, tlog_verify.SourceError, CheckpointError, WitnessError, tlog.NoteKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except asyncpg.InsufficientPrivilegeError as exc:
        # An auditor's role, not the owner's: the general advice (run it as the owner role) would be wrong here.
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        print(f"error: the role cannot read what the verification reads: {first_line}; an auditor's role needs SELECT "
              "on the log's tables (docs/operations.md, « Database roles »)", file=sys.stderr)
        return 2
    if report.unidentified is not None and args.state is not None:
        # without --state nothing depends on the database's identity: a full pass checks every tombstone anyway
        print(f"warning: {report.unidentified}", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=2) if args.json else tlog_verify.describe(report))
    try:
        _record(args, report)
    except OSError as exc:
        print(f"error: cannot record the state: {exc}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


async def _prune(args: argparse.Namespace, config: Config) -> int:
    # deleting from the log is the owner's privilege, never the serving role's (docs/operations.md)
    async with _database(args.database_url or config.admin_database_url, config) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            if not args.dry_run:
                async with pool.acquire() as conn:
                    _print_created(await partitions.ensure(conn, now=datetime.now(UTC)))
            pruned = await tlog.prune(pool, now=datetime.now(UTC), default_retention=config.log_retention,
                                      dry_run=args.dry_run)
        finally:
            await pool.close()
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {_entries(len(pruned))} (leaf hashes kept)")
    whole: dict[str, int] = {}
    for p in pruned:
        if p.partition is not None:
            whole[p.partition] = whole.get(p.partition, 0) + 1
    for name, count in whole.items():
        print(f"  partition {name}: {_entries(count)}, {'would be ' if args.dry_run else ''}dropped whole")
    for p in pruned:
        if p.partition is None:
            print(f"  {p.index} {p.entry_id} logged {p.logged_at.isoformat()}")
    return 0


def _print_created(created: list[str]) -> None:
    for name in created:
        print(f"created partition {name}")


async def _partitions(args: argparse.Namespace, config: Config) -> int:
    async with _database(args.database_url or config.admin_database_url, config) as dsn:
        conn = await db.connect(dsn)
        try:
            _print_created(await partitions.ensure(conn, now=datetime.now(UTC), ahead=args.ahead))
            found = await partitions.listing(conn)
            waiting = await partitions.default_rows(conn)
        finally:
            await conn.close()
    for p in found:
        span = "default" if p.lower is None or p.upper is None else \
            f"[{p.lower.astimezone(UTC):%Y-%m-%d}, {p.upper.astimezone(UTC):%Y-%m-%d})"
        print(f"{p.name:<24} {span:<26} ~{p.estimated_rows} rows")
    if waiting:
        # ensure just moved every row out of the default partition: a row here arrived since, or failed to move
        print(f"warning: {waiting} row(s) still in the default partition", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    if args.log_command in ("evidence", "verify-evidence", "verify-proof"):
        return offline.run(args, config)
    if args.log_command == "verify":
        return _verify(args, config)
    try:
        if args.log_command == "partitions":
            return asyncio.run(_partitions(args, config))
        return asyncio.run(_prune(args, config))
    except db.DB_ERRORS as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
