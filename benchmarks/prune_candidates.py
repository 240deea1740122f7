"""`log prune`'s candidates on a large log with mixed retentions, with and without parallel workers.

    .venv/bin/python benchmarks/large_log.py generate --rows 300000 --database dlnuf_large_x
    .venv/bin/python benchmarks/prune_candidates.py --database dlnuf_large_x --reps 9

On a database `large_log.py generate` made (300,000 v2 entries of one retention, P1Y, over the last year), adds once
(marked by request ids `mix-...`) `--mixed` v2 entries of four interleaved retentions (P1M, P3M, P6M, P2Y) and
`--v1` v1 entries (no retention of their own: their habilitation's, P1M, P3M or P2Y, or the default for a gone
habilitation or none), spread over the same year, integrated (indices after the log's, without tree nodes: prune
does not read them). Then it measures `tlog_prune_candidates` (tlog.sql) with a batch of 1,000: EXPLAIN (ANALYZE,
FORMAT JSON) of the PREPAREd statement, under plan_cache_mode force_custom_plan and force_generic_plan, with the
server's max_parallel_workers_per_gather and with 0 (SET LOCAL), alternated and order swapped every repetition;
first with what is due still there, then after `log prune` (the broker's `prune`, default retention P1Y) and a
VACUUM ANALYZE, as a later run finds the log. Prints medians (execution and planning ms, workers launched, rows
returned) and the cost of a round trip that sets the setting on its own. Changes the database; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.storage import db  # noqa: E402 - after the path
from broker.tlog import log as tlog  # noqa: E402

CANDIDATES = db.queries("broker.tlog", "tlog.sql")["tlog_prune_candidates"]
CONSUMER = "21759999999999"
HABILITATIONS = {"h-mix-1m": "P1M", "h-mix-3m": "P3M", "h-mix-2y": "P2Y"}
DEFAULT = "P1Y"
BATCH = 1000

# Entry i of the mix: v1 when i % (n / v1) == 0, else v2 with the retention i % 4 picks; at start + i * step.
MIX = """
INSERT INTO access_log (id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
                        habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url, fields_requested,
                        fields_released, outcome, http_status, subject_key, leaf_version, retention, latency_us,
                        latency_ms, payload_sha256, payload_salt, payload_commitment, request_signature_sha256)
SELECT gen_random_uuid(), $2::timestamptz + i * $3::interval, 'mix-' || i, $5, $5 || '-ed25519',
       'quotient_familial', 1, 'mix', 'mix', h.id, 'information', 't', 'https://x', '{f}', '{f}', 'released',
       200, encode(sha256(convert_to('subject ' || i, 'UTF8')), 'hex'),
       CASE WHEN v.v1 THEN 1 ELSE 2 END,
       CASE WHEN NOT v.v1 THEN (ARRAY['P1M', 'P3M', 'P6M', 'P2Y'])[i % 4 + 1] END,
       CASE WHEN NOT v.v1 THEN 1500 END, CASE WHEN v.v1 THEN 1.5 END,
       CASE WHEN v.v1 THEN encode(sha256(convert_to('payload ' || i, 'UTF8')), 'hex') END,
       CASE WHEN NOT v.v1 THEN sha256(convert_to('salt ' || i, 'UTF8')) END,
       CASE WHEN NOT v.v1 THEN encode(sha256(convert_to('commitment ' || i, 'UTF8')), 'hex') END,
       encode(sha256(convert_to('signature ' || i, 'UTF8')), 'hex')
FROM generate_series(0, $1::bigint - 1) AS i
CROSS JOIN LATERAL (SELECT i % $4 = 0 AS v1) v
CROSS JOIN LATERAL (SELECT (ARRAY['h-mix-1m', 'h-mix-3m', 'h-mix-2y', 'h-mix-gone', NULL])[i / $4 % 5 + 1] AS id) h
"""
INDICES = """
INSERT INTO tlog_entries (log_index, entry_id, logged_at, v1)
SELECT (SELECT coalesce(max(log_index), -1) FROM tlog_entries) + row_number() OVER (ORDER BY logged_at, id),
       id, logged_at, leaf_version = 1
FROM access_log WHERE request_id LIKE 'mix-%'
"""


async def add_mix(conn: asyncpg.Connection, mixed: int, v1: int) -> None:
    if await conn.fetchval("SELECT EXISTS (SELECT FROM access_log WHERE request_id LIKE 'mix-%')"):
        print("the mix is there already", file=sys.stderr)
        return
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    total = mixed + v1
    async with conn.transaction():
        await conn.execute("INSERT INTO organisations (siret, name, roles) VALUES ($1, 'mix', '{consumer}')",
                           CONSUMER)
        for hid, retention in HABILITATIONS.items():
            await conn.execute(
                "INSERT INTO habilitations (id, consumer, dataset, purposes, fields, recipients, legal_basis_type, "
                "legal_basis_title, legal_basis_url, retention) VALUES ($1, $2, $1, '{p}', '{f}', '{r}', "
                "'information', 't', 'https://x', $3)", hid, CONSUMER, retention)
        # as large_log.py: integrated already, so neither queued nor checked leaf by leaf
        await conn.execute("ALTER TABLE tlog_entries DISABLE TRIGGER tlog_entries_guard")
        await conn.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_enqueue")
        await conn.execute(MIX, total, start, (now - timedelta(hours=1) - start) / total, total // v1, CONSUMER)
        await conn.execute(INDICES)
        await conn.execute("ALTER TABLE tlog_entries ENABLE TRIGGER tlog_entries_guard")
        await conn.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_enqueue")
    await conn.execute("VACUUM ANALYZE access_log")
    await conn.execute("VACUUM ANALYZE tlog_entries")


async def explain(conn: asyncpg.Connection, now: datetime, mode: str, serial: bool) -> dict[str, float]:
    async with conn.transaction():
        if serial:
            await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE candidates(timestamptz, text, bigint) AS {CANDIDATES.strip().rstrip(';')}")
        try:
            plan = (await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE "
                                        f"candidates('{now.isoformat()}', '{DEFAULT}', {BATCH})"))[0]
        finally:
            await conn.execute("DEALLOCATE candidates")

    def launched(node: dict[str, object]) -> int:
        children = node.get("Plans", [])
        assert isinstance(children, list)
        return int(node.get("Workers Launched", 0)) + sum(launched(c) for c in children)

    return {"execution": plan["Execution Time"], "planning": plan["Planning Time"],
            "workers": launched(plan["Plan"]), "rows": plan["Plan"]["Actual Rows"]}


async def measure(conn: asyncpg.Connection, reps: int, title: str) -> None:
    now = datetime.now(UTC)
    variants = [(mode, serial) for mode in ("force_custom_plan", "force_generic_plan") for serial in (False, True)]
    found: dict[tuple[str, bool], list[dict[str, float]]] = {v: [] for v in variants}
    for rep in range(reps):
        for v in variants if rep % 2 == 0 else variants[::-1]:
            found[v].append(await explain(conn, now, *v))
    print(f"\n{title} ({reps} repetitions, median; EXPLAIN ANALYZE, batch {BATCH})")
    print(f"{'plan':>8} {'workers/gather':>15} {'execution ms':>13} {'planning ms':>12} {'launched':>9} {'rows':>6}"
          "  execution per repetition")
    for (mode, serial), runs in found.items():
        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        print(f"{mode.split('_')[1]:>8} {'0' if serial else 'default':>15} {med('execution'):>13.2f} "
              f"{med('planning'):>12.2f} {med('workers'):>9.0f} {med('rows'):>6.0f}  "
              + " ".join(f"{r['execution']:.1f}" for r in runs))


async def round_trip(conn: asyncpg.Connection, reps: int) -> float:
    """Median ms of the statement of its own that would set the setting, in a transaction as prune's would."""
    times = []
    for _ in range(reps):
        async with conn.transaction():
            started = time.perf_counter()
            await conn.execute("SELECT set_config('max_parallel_workers_per_gather', '0', true)")
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database", required=True, help="a database large_log.py generate made (it is changed)")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--mixed", type=int, default=100_000)
    p.add_argument("--v1", type=int, default=2_000)
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    dsn = args.admin_url.rsplit("/", 1)[0] + "/" + args.database
    conn = await db.connect(dsn)
    try:
        print("max_parallel_workers_per_gather:", await conn.fetchval("SHOW max_parallel_workers_per_gather"),
              "entries:", await conn.fetchval("SELECT count(*) FROM access_log"))
        await add_mix(conn, args.mixed, args.v1)
        await measure(conn, args.reps, "with what is due")
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            started = time.monotonic()
            pruned = await tlog.prune(pool, now=datetime.now(UTC), default_retention=DEFAULT)
            print(f"\nprune: {len(pruned):,} entries in {time.monotonic() - started:.1f} s")
        finally:
            await pool.close()
        await conn.execute("VACUUM ANALYZE")
        await measure(conn, args.reps, "after prune and VACUUM ANALYZE")
        print(f"\na statement of its own setting it: {await round_trip(conn, 200):.3f} ms (median of 200)")
    finally:
        await conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
