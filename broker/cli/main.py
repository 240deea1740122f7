"""The command line, `python -m broker` (or `dlnuf`): serve, migrate, registry apply, keys generate, request, demo,
log, gateway.

Invariant: every command ends with exit status 0, or with one line on stderr saying what went wrong and a non-zero
status (2: the command line, the configuration or a file is wrong; 3: the database is unreachable; 1: anything
else; 130: interrupted); never with a traceback, unless `DLNUF_TRACEBACK=1` asks for one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

from broker import registry
from broker.cli import database as cli_database
from broker.cli import dbshell, demo
from broker.cli import gateway as cli_gateway
from broker.cli import log as cli_log
from broker.cli import request as cli_request
from broker.config import Config, ConfigError, load_config, verify_servable
from broker.observability import tracing
from broker.observability.logs import configure
from broker.storage import db, nodekeys, roles
from broker.tlog import partitions


def _database(config: Config) -> AbstractAsyncContextManager[str]:
    return db.database_dsn(config.database_url, config.state_dir)


async def _migrate(config: Config) -> int:
    # as the owner role when there is one (docs/operations.md): the serving role may not create tables
    async with db.database_dsn(config.admin_database_url or config.database_url, config.state_dir) as dsn:
        conn = await db.connect(dsn)
        try:
            applied = await db.migrate(conn)
            # the coming months of the access log (a timer runs `log partitions` too: docs/operations.md)
            created = await partitions.ensure(conn, now=datetime.now(UTC))
        finally:
            await conn.close()
    print(f"{len(applied)} migration(s) applied" + "".join(f"\n  {m.version:04d} {m.name}" for m in applied))
    print("".join(f"created partition {name}\n" for name in created), end="")
    return 0


async def _verify_database_role(config: Config) -> None:
    """`serve` refuses a role that could unprotect the access log (broker/storage/roles.py), unless told otherwise.
    The embedded PostgreSQL needs no check here: the broker makes its own least-privilege role there."""
    if config.database_url is None or config.unsafe_superuser:
        return
    if config.admin_database_url is not None:
        # migrate first as the owner, so the check sees the log the broker will serve
        conn = await db.connect(config.admin_database_url)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
    conn = await db.connect(config.database_url)
    try:
        await roles.verify_least_privilege(conn)
    finally:
        await conn.close()


async def _registry_apply(config: Config, file: Path, text: str, *, dry_run: bool, prune: bool) -> int:
    """The diff against the database, then the change; a dry run runs it and rolls it back, so it reports (and
    refuses) exactly what a real run would."""
    try:
        wanted = registry.parse_registry(text, str(file))
    except registry.RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in wanted.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    async with _database(config) as dsn:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
            report = await registry.apply(conn, wanted, prune=prune, dry_run=dry_run)
        except registry.RemovalRefused as exc:
            print(f"error: {file}: {exc}", file=sys.stderr)
            return 2
        finally:
            await conn.close()
    print(report)
    return 0


# The subject-key secret and the identity-sealing key cannot change: subject keys (a citizen's journal) and sealed
# identities derive from them, and old ones could no longer be found or opened.
ROTATABLE = ("signing", "log")


async def _keys_rotate(config: Config, names: list[str]) -> int:
    """The new key files are in place on this node (and, after this, on every node); the old public keys stay
    where verifiers find them: key_history (evidence of old answers) and `log verify --vkey OLD --vkey NEW`."""
    from broker.app import node_keys

    keys = node_keys(config)
    async with db.database_dsn(config.admin_database_url or config.database_url, config.state_dir) as dsn:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
            changed = await nodekeys.rotate(conn, keys, sorted(set(names)))
        finally:
            await conn.close()
    print("\n".join(changed) if changed else "nothing to rotate: these keys are already the current ones")
    return 0


def _keys_generate(alg: str, kid: str, out: Path | None) -> int:
    from broker.signing.keys import generate_private_key

    key = generate_private_key(alg, kid=kid)
    private = key.to_jwk()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = out.open("x")
        except FileExistsError:
            print(f"error: {out} exists: a private key is never overwritten; choose another --out",
                  file=sys.stderr)
            return 2
        with f:
            out.chmod(0o600)
            json.dump(private, f, indent=2)
        print(f"private key written to {out} (keep it secret; mode 0600)", file=sys.stderr)
    else:
        print(json.dumps(private, indent=2))
        print("# the private key above is printed because --out was not given", file=sys.stderr)
    public = key.public_jwk()
    print("# add to your registry under the organisation:", file=sys.stderr)
    print("[[organisations.keys]]")
    print(f'kid = "{public["kid"]}"')
    print("jwk = { " + ", ".join(f'{k} = "{v}"' for k, v in public.items() if k != "kid") + " }")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): nothing more may go to that pipe, not even at exit's flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("error: the output was closed before the end (broken pipe)", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("DLNUF_TRACEBACK") == "1":
            raise
        message, status = _explain(exc)
        print(f"error: {message}", file=sys.stderr)
        return status


def _explain(exc: Exception) -> tuple[str, int]:
    """One line for an error no command caught, and the exit status."""
    if isinstance(exc, ConfigError):
        return f"configuration: {exc}", 2
    if isinstance(exc, aiohttp.ClientError):
        return f"the broker is unreachable: {exc}", 3
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return (f"the database role lacks a privilege: {_first_line(exc)} (migrations and `log prune` run as the "
                "owner role, DLNUF_ADMIN_DATABASE_URL; see docs/operations.md, « Database roles »)"), 2
    if isinstance(exc, roles.UnsafeDatabaseRole | nodekeys.KeyMismatch | tracing.TracingUnavailable):
        return str(exc), 2
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | ConnectionError | TimeoutError):
        return f"the database is unreachable or refused the command: {_first_line(exc)}", 3
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or _first_line(exc)}", 2
    return f"{type(exc).__name__}: {_first_line(exc)} (DLNUF_TRACEBACK=1 shows where)", 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _workers(text: str) -> int:
    """`--workers`: a positive count, or "auto" for the cores this process may use."""
    if text == "auto":
        from broker.cli.cores import usable_cpus

        return usable_cpus()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--registry", type=Path, help="apply this registry file at start")
    serve.add_argument("--workers", type=_workers, default=1,
                       help="broker processes sharing the port (SO_REUSEPORT) and the database; one per core: "
                            "'auto' starts one per core this process may use (its CPU affinity and container "
                            "quota); default 1")
    serve.add_argument("--unsafe-superuser", action="store_true", default=None,
                       help="serve even when DATABASE_URL's role is a superuser or owns the access log, and so could "
                            "disable its triggers (DLNUF_UNSAFE_SUPERUSER=true); see `db grant`")

    sub.add_parser("migrate", help="apply database migrations")

    reg = sub.add_parser("registry", help="registry commands")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True)
    apply_p = reg_sub.add_parser("apply", help="make the database registry equal to FILE")
    apply_p.add_argument("file", type=Path)
    apply_p.add_argument("--dry-run", action="store_true",
                         help="run the change against the database and roll it back: the same report, nothing changed")
    apply_p.add_argument("--prune", action="store_true",
                         help="allow removing the organisations, keys, adapters and habilitations the file omits")

    keys = sub.add_parser("keys", help="key commands")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="generate an organisation signing key (private JWK)")
    gen.add_argument("--alg", choices=["ed25519", "ecdsa-p256-sha256"], default="ed25519")
    gen.add_argument("--kid", required=True, help="key id, e.g. commune-paris-2026-01")
    gen.add_argument("--out", type=Path, help="write the private JWK here (mode 0600)")
    rot = keys_sub.add_parser("rotate", help="make this node's response-signing and/or log key the ones every node "
                                             "must use, the previous ones retired (as the owner role)")
    rot.add_argument("--key", action="append", choices=list(ROTATABLE), required=True,
                     help="signing (DLNUF_SIGNING_KEY) or log (DLNUF_LOG_KEY); repeatable")

    cli_request.add_parser(sub)
    database = sub.add_parser("db", help="database commands")
    db_sub = database.add_subparsers(dest="db_command", required=True)
    dbshell.add_parser(db_sub)
    cli_database.add_parser(db_sub)
    cli_log.add_parser(sub)
    demo.add_parser(sub)
    cli_gateway.add_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "gateway":  # the consumer's side: none of the broker's configuration applies
        return cli_gateway.run(args)
    try:
        config = load_config(
            host=getattr(args, "host", None), port=getattr(args, "port", None),
            registry_file=getattr(args, "registry", None),
            unsafe_superuser=getattr(args, "unsafe_superuser", None),
        )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_format)

    command: str = args.command
    if command == "serve":
        from broker.app import create_app
        from broker.service.runner import serve as serve_app

        verify_servable(config)
        asyncio.run(_verify_database_role(config))
        from broker.cli.workers import serve_workers, use_event_loop

        if args.workers > 1:
            return serve_workers(config, args.workers)
        use_event_loop(config.event_loop)
        asyncio.run(serve_app(create_app(config), host=config.host, port=config.port,
                          announce=lambda s: print(s, file=sys.stderr)))
        return 0
    if command == "migrate":
        return asyncio.run(_migrate(config))
    if command == "registry":
        try:
            text = args.file.read_text("utf-8")
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
        return asyncio.run(_registry_apply(config, args.file, text, dry_run=args.dry_run, prune=args.prune))
    if command == "keys" and args.keys_command == "rotate":
        return asyncio.run(_keys_rotate(config, args.key))
    if command == "keys":
        return _keys_generate(args.alg, args.kid, args.out)
    if command == "request":
        return cli_request.run(args)
    if command == "log":
        return cli_log.run(args, config)
    if command == "demo":
        return demo.run(args, config)
    if command == "db" and args.db_command == "grant":
        return cli_database.run(args, config)
    if command == "db":
        return dbshell.run(args, config)
    parser.error("unknown command")
    return 2

