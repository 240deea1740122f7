"""The broker's three log statements as they were before migration 0031, for upgrade tests: entries written without
a queue line, pending rows found by `log_index IS NULL`, indices given by UPDATE. With them swapped in,
`accesslog.commit` and `TransparencyLog.integrate` write a database migrated up to 0030 (or earlier) exactly as an
earlier broker did, and the test can then migrate it and check what 0031 kept."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from broker.storage import db

PENDING = """
SELECT seq, id, leaf_hash, logged_at, latency_us, latency_ms
FROM access_log WHERE log_index IS NULL ORDER BY seq LIMIT $1
"""

# $4 (the queue's seq values, which did not exist) is accepted and ignored.
ASSIGN = """
UPDATE access_log SET log_index = a.log_index
FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[]) AS a(id, logged_at, log_index)
WHERE access_log.id = a.id AND access_log.logged_at = a.logged_at AND cardinality($4::bigint[]) >= 0
"""


def _insert_without_queue(text: str) -> str:
    without, n = re.subn(r"\), queued AS \(\n    INSERT INTO tlog_queue[^\n]*\n\), outbox AS", "), outbox AS", text)
    if n != 1:
        raise AssertionError("log_batch_insert no longer has the queue step this emulation removes")
    return without.replace("RETURNING seq, id, logged_at\n), outbox AS", "RETURNING 1\n), outbox AS")


@contextlib.contextmanager
def old_statements() -> Iterator[None]:
    """Within: the statements as before 0031 (for tests, and benchmarks/integrator_round.py's comparison)."""
    q = db.queries("broker.tlog", "tlog.sql")
    saved = {name: q[name] for name in ("tlog_pending", "tlog_assign", "log_batch_insert")}
    q.update(tlog_pending=PENDING, tlog_assign=ASSIGN,
             log_batch_insert=_insert_without_queue(saved["log_batch_insert"]))
    try:
        yield
    finally:
        q.update(saved)
