"""Exchange throughput with a large access log against an empty one (issue 12: "a 10-million-row log keeps exchange
throughput within 10 % of an empty one").

    .venv/bin/python benchmarks/large_log.py generate --rows 10000000    # once: tens of minutes, kept
    .venv/bin/python benchmarks/large_log.py compare --rows 10000000     # exchange.py runs, interleaved
    .venv/bin/python benchmarks/large_log.py drop --rows 10000000

`generate` makes a database `dlnuf_large_<rows>` (or `--database`; an existing one only with `--replace`) on the
server at --admin-url (as its superuser, so as the owner):
migrated, with `rows` access-log entries spread evenly over the last twelve months (one partition a month), each a
v2 entry as the pipeline writes them (a consumer among twenty, a subject among a million, 92 % released, 8 %
refused, 2 % failed), already integrated (indices 0..rows-1 in tlog_entries), and the transparency log's state for
them: every node of the tree (leaves and perfect subtrees, level by level, in SQL), the head, and a checkpoint of
that size signed with a note key written beside (`<workdir>/log-note-key`, origin bench.dlnuf/log as exchange.py's
broker has it). So the broker's integrator continues from a tree of `rows` leaves instead of integrating them at
start. What is left out, and why: the leaves are not the hashes of the rows' own entries (SHA-256 of the index:
computing the real leaves is about 0.1 ms of Python per entry, 17 minutes per 10 million on these 2 cores), so `log
verify` on this database reports every prefilled entry as modified; and the prefilled entries have no evidence and
no outbox rows (both are keyed by entry id, and the exchange path never reads old ones).

`compare` runs `exchange.py --quick --workers 2 --levels 1,32 --no-profile` (or the --exchange-args given)
alternately against a fresh, empty database and against the large one (`--database-url`: used as it is, not
dropped; the node keys and consumer key a previous run recorded are removed first, since each run makes new
keys), `--reps` times
each, order swapped every repetition so that the drifts of a shared machine hit both alike, and prints the broker's
requests/s per concurrency level for both and their ratio (median over repetitions). Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.storage import db  # noqa: E402 - after the path
from broker.tlog import merkle, partitions  # noqa: E402
from broker.tlog.log import PgNodeStore, load_or_create_note_key  # noqa: E402

ORIGIN = "bench.dlnuf/log"  # exchange.py's broker (stack.py: DLNUF_LOG_ORIGIN)
CHUNK = 200_000

# One v2 entry per index i, as the pipeline writes it; deterministic in i except the ids.
GENERATE = """
INSERT INTO access_log (id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
                        habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url, fields_requested,
                        fields_released, outcome, problem_type, http_status, subject_key, leaf_version,
                        retention, latency_us, payload_salt, payload_commitment, request_signature_sha256)
SELECT gen_random_uuid(), $3::timestamptz + i * $4::interval, 'large-' || i, c.siret, c.siret || '-ed25519',
       'quotient_familial', 1, 'tarification-restauration-scolaire', c.siret, 'cantine-' || c.siret, 'information',
       'Information préalable (CRPA L. 114-8)', 'https://www.legifrance.gouv.fr/codes/article_lc/LEGIARTI000038611862',
       '{quotient_familial,enfants}', CASE WHEN o.outcome = 'released' THEN '{quotient_familial,enfants}'::text[]
                                           ELSE '{}' END,
       o.outcome, CASE o.outcome WHEN 'refused' THEN 'https://dlnuf.org/problems/no-consent'
                                 WHEN 'failed' THEN 'https://dlnuf.org/problems/provider-unavailable' END,
       CASE o.outcome WHEN 'released' THEN 200 WHEN 'refused' THEN 403 ELSE 502 END,
       encode(sha256(convert_to('subject ' || (i * 7919 % 1000000), 'UTF8')), 'hex'), 2, 'P1Y',
       1500 + (i * 37 % 20000),
       CASE WHEN o.outcome = 'released' THEN sha256(convert_to('salt ' || i, 'UTF8')) END,
       CASE WHEN o.outcome = 'released' THEN encode(sha256(convert_to('commitment ' || i, 'UTF8')), 'hex') END,
       encode(sha256(convert_to('signature ' || i, 'UTF8')), 'hex')
FROM generate_series($1::bigint, $2::bigint - 1) AS i
CROSS JOIN LATERAL (SELECT '2175' || lpad((i % 20)::text, 10, '0') AS siret) c
CROSS JOIN LATERAL (SELECT CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 50 <= 4 THEN 'refused'
                                ELSE 'released' END AS outcome) o
"""
# Entry i's index is i (its request_id says which it is); the chunk's rows are found by their logged_at.
INDICES = """
INSERT INTO tlog_entries (log_index, entry_id, logged_at)
SELECT substr(request_id, 7)::bigint, id, logged_at FROM access_log
WHERE logged_at >= $3::timestamptz + $1 * $4::interval AND logged_at < $3::timestamptz + $2 * $4::interval
"""
LEAVES = """
INSERT INTO tlog_nodes (level, idx, hash)
SELECT 0, i, sha256('\\x00'::bytea || int8send(i)) FROM generate_series($1::bigint, $2::bigint - 1) AS i
"""
PARENTS = """
INSERT INTO tlog_nodes (level, idx, hash)
SELECT $1::smallint + 1, l.idx / 2, sha256('\\x01'::bytea || l.hash || r.hash)
FROM tlog_nodes l JOIN tlog_nodes r ON r.level = l.level AND r.idx = l.idx + 1
WHERE l.level = $1 AND l.idx % 2 = 0 AND l.idx >= $2 AND l.idx < $3
"""


def database_name(rows: int) -> str:
    return f"dlnuf_large_{rows}"


def with_database(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + name


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def generate(admin_url: str, rows: int, workdir: Path, name: str, *, replace: bool) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        # Two people measuring on one server asked for the same size, and the second one's generate dropped the
        # first one's database under their connections: replacing one is asked for, not done by default.
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            if not replace:
                raise SystemExit(f"database {name} exists: --replace to drop and generate it again, or --database "
                                 "to name another")
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(admin_url, name)
    conn = await db.connect(dsn)
    started = time.monotonic()
    try:
        await db.migrate(conn)
        now = datetime.now(UTC)
        start = now - timedelta(days=365)
        step = (now - timedelta(hours=1) - start) / rows
        month = partitions.month_of(start)
        while month <= partitions.month_of(now):
            await conn.fetchval("SELECT access_log_create_partition($1::date)", month)
            month = partitions.add_months(month, 1)
        await partitions.ensure(conn, now=now)
        # as the owner, without the per-row checks of tlog_entries' guard (each index has its stored leaf here), and
        # without queueing the rows for the integrator: they are integrated already
        await conn.execute("ALTER TABLE tlog_entries DISABLE TRIGGER tlog_entries_guard")
        await conn.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_enqueue")
        for lo in range(0, rows, CHUNK):
            hi = min(rows, lo + CHUNK)
            async with conn.transaction():
                await conn.execute(GENERATE, lo, hi, start, step)
                await conn.execute(LEAVES, lo, hi)
                await conn.execute(INDICES, lo, hi, start, step)
            say(f"  {hi:,} rows ({time.monotonic() - started:.0f} s)")
        await conn.execute("ALTER TABLE tlog_entries ENABLE TRIGGER tlog_entries_guard")
        await conn.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_enqueue")
        level, count = 0, rows
        while count >= 2:
            for lo in range(0, count, 4 * CHUNK):
                await conn.execute(PARENTS, level, lo, min(count, lo + 4 * CHUNK))
            level, count = level + 1, count // 2
            say(f"  tree level {level}: {count:,} nodes ({time.monotonic() - started:.0f} s)")
        # the state the integrator continues from: head, and a checkpoint signed with the broker's log key
        signer = load_or_create_note_key(workdir / "log-note-key", ORIGIN)
        root = await merkle.tree_root(rows, PgNodeStore(conn))
        await conn.execute("UPDATE tlog_head SET size = $1", rows)
        await conn.execute("INSERT INTO tlog_checkpoints (size, note) VALUES ($1, $2)", rows,
                           signer.sign_checkpoint(rows, root))
        say(f"  VACUUM ANALYZE ({time.monotonic() - started:.0f} s)")
        await conn.execute("VACUUM ANALYZE")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    finally:
        await conn.close()
    (workdir / "info.json").write_text(json.dumps({"database": name, "rows": rows, "generated": now.isoformat(),
                                                   "seconds": round(time.monotonic() - started)}) + "\n")
    say(f"generated {rows:,} entries in {name} ({size}) in {time.monotonic() - started:.0f} s; key in {workdir}")


async def forget_previous_run(dsn: str) -> None:
    """Each exchange.py run makes new keys: the node keys and the consumer key a previous run recorded would stop
    the broker (a node with other keys refuses to start; registry apply refuses to remove a key unasked)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM node_keys")
        await conn.execute("DELETE FROM organisation_keys")
    finally:
        await conn.close()


def run_exchange(extra: list[str], exchange_args: list[str], out: Path) -> dict[str, float]:
    command = [sys.executable, str(ROOT / "benchmarks" / "exchange.py"), *exchange_args, "--json", str(out),
               *extra]
    say("$ " + " ".join(command))
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    figures = json.loads(out.read_text())
    return {level: float(cell["rate"]) for level, cell in figures["closed"]["broker"].items()}


def compare(admin_url: str, rows: int, workdir: Path, reps: int, exchange_args: list[str], name: str) -> None:
    dsn = with_database(admin_url, name)
    large_args = ["--database-url", dsn, "--broker-env", f"DLNUF_LOG_KEY={workdir / 'log-note-key'}"]
    rates: dict[str, list[dict[str, float]]] = {"empty": [], "large": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            order = ["empty", "large"] if rep % 2 == 0 else ["large", "empty"]
            for which in order:
                if which == "large":
                    asyncio.run(forget_previous_run(dsn))
                rates[which].append(run_exchange(large_args if which == "large" else ["--admin-url", admin_url],
                                                 exchange_args, Path(tmp) / f"{which}-{rep}.json"))
                say(f"  rep {rep + 1} {which}: " + ", ".join(f"c={k} {v:,.0f}/s" for k, v in
                                                            rates[which][-1].items()))
    print(f"\nexchange throughput, broker, {rows:,}-entry log against an empty one ({reps} repetitions, "
          f"interleaved; exchange.py {' '.join(exchange_args)})")
    print(f"{'level':>6} {'empty req/s':>12} {'large req/s':>12} {'large/empty':>12}  per repetition")
    for level in rates["empty"][0]:
        empty = [r[level] for r in rates["empty"]]
        large = [r[level] for r in rates["large"]]
        ratios = [b / a for a, b in zip(empty, large, strict=True)]
        print(f"{'c=' + level:>6} {statistics.median(empty):>12,.0f} {statistics.median(large):>12,.0f} "
              f"{statistics.median(ratios):>12.3f}  {' '.join(f'{x:.3f}' for x in ratios)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["generate", "compare", "drop"])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", help="the database's name (default: dlnuf_large_<rows>)")
    p.add_argument("--replace", action="store_true", help="generate: drop the database first if it exists")
    p.add_argument("--workdir", type=Path,
                   help="where the note key is kept (default: ~/.cache/<the database's name>)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--exchange-args", default="--quick --workers 2 --levels 1,32 --no-profile",
                   help="exchange.py's options for every run (default: %(default)s)")
    args = p.parse_args()
    name = args.database or database_name(args.rows)
    if not re.fullmatch(r"[a-z0-9_]+", name):
        p.error("--database: lower-case letters, digits and _ only")
    workdir = args.workdir or Path.home() / ".cache" / name
    workdir.mkdir(parents=True, exist_ok=True)
    if args.command == "generate":
        asyncio.run(generate(args.admin_url, args.rows, workdir, name, replace=args.replace))
    elif args.command == "compare":
        compare(args.admin_url, args.rows, workdir, args.reps, args.exchange_args.split(), name)
    else:
        async def drop() -> None:
            conn = await asyncpg.connect(args.admin_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
        asyncio.run(drop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
