"""The integrator's statements as they were before migration 0031, for upgrade tests and
benchmarks/integrator_round.py: pending rows found by `log_index IS NULL`, indices given by UPDATE, no queue. With
them swapped in, `TransparencyLog.integrate` works on a database migrated up to 0030 (or earlier) exactly as an
earlier broker did; entries are written there by today's `log_batch_insert`, which is the same as then (the queue
is filled by a trigger that 0031 adds)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from broker.storage import db

PENDING = """
SELECT seq, id, leaf_hash, logged_at, latency_us, latency_ms, leaf_version
FROM access_log WHERE log_index IS NULL ORDER BY seq LIMIT $1
"""

ASSIGN = """
UPDATE access_log SET log_index = a.log_index
FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[]) AS a(id, logged_at, log_index)
WHERE access_log.id = a.id AND access_log.logged_at = a.logged_at AND cardinality($4::boolean[]) >= 0
"""

DEQUEUE = "SELECT cardinality($1::bigint[])"  # there was no queue


@contextlib.contextmanager
def old_statements() -> Iterator[None]:
    """Within: the statements as before 0031."""
    q = db.queries("broker.tlog", "tlog.sql")
    saved = {name: q[name] for name in ("tlog_pending", "tlog_assign", "tlog_dequeue")}
    q.update(tlog_pending=PENDING, tlog_assign=ASSIGN, tlog_dequeue=DEQUEUE)
    try:
        yield
    finally:
        q.update(saved)
