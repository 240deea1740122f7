"""The integrator's statements as they were before migration 0031, for upgrade tests and
benchmarks/integrator_round.py: pending rows found by `log_index IS NULL`, indices given by UPDATE, no queue. With
them swapped in, `TransparencyLog.integrate` works on a database migrated up to 0030 (or earlier) exactly as an
earlier broker did; entries are written there by `log_batch_insert` as before 0032 (the same as today's, but for
the outbox line's logged_at; the queue is filled by a trigger that 0031 adds)."""

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


OUTBOX_NOW = "INSERT INTO notification_outbox (entry_id, logged_at) SELECT id, logged_at FROM entries"
OUTBOX_BEFORE_0032 = "INSERT INTO notification_outbox (entry_id) SELECT id FROM entries"


@contextlib.contextmanager
def log_insert_before_0032() -> Iterator[None]:
    """Within: entries are written as a broker of the release before migration 0032 wrote them, its outbox line
    without logged_at."""
    q = db.queries("broker.tlog", "tlog.sql")
    saved = q["log_batch_insert"]
    assert OUTBOX_NOW in saved
    q["log_batch_insert"] = saved.replace(OUTBOX_NOW, OUTBOX_BEFORE_0032)
    try:
        yield
    finally:
        q["log_batch_insert"] = saved


@contextlib.contextmanager
def old_statements() -> Iterator[None]:
    """Within: the statements as before 0031."""
    q = db.queries("broker.tlog", "tlog.sql")
    saved = {name: q[name] for name in ("tlog_pending", "tlog_assign", "tlog_dequeue")}
    q.update(tlog_pending=PENDING, tlog_assign=ASSIGN, tlog_dequeue=DEQUEUE)
    try:
        with log_insert_before_0032():
            yield
    finally:
        q.update(saved)
