"""Expiring due consents, which every broker process does every 30 seconds, finds them by index (migration 0035)
rather than by reading every consent ever given."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from consent import records
from consent.records import _q
from tests.tlog.test_partitions import executed_plan


def scans(plan: dict[str, object]) -> list[tuple[object, object, object]]:
    """(node type, relation, index) of every node of an EXPLAIN (FORMAT JSON) plan."""
    found = [(plan.get("Node Type"), plan.get("Relation Name"), plan.get("Index Name"))]
    for child in plan.get("Plans", []):  # type: ignore[attr-defined]
        found += scans(child)
    return found

ROWS = """
INSERT INTO consents (id, subject_key, identity_ciphertext, controller, controller_name, recipient, habilitation_id,
                      dataset, dataset_version, provider, purpose, fields, legal_basis_title, legal_basis_url, state,
                      frequency, expires_at)
SELECT gen_random_uuid(), 'subject-' || n, '\\x00', '21750001600019', 'Paris', '21750001600019', 'hab', 'ds', 1,
       '13000000000000', 'purpose', '{a}', 'title', 'https://example.gouv.fr', $1, 'one_time',
       now() + make_interval(days => $2 + n % 30)
FROM generate_series(1, $3) AS n
"""


async def test_due_consents_are_found_by_index_and_only_they_expire(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await pool.execute(ROWS, "revoked", -400, 20_000)  # a long history of consents no longer active
        await pool.execute(ROWS, "active", 10, 2_000)      # live ones, due later
        await pool.execute(ROWS, "active", -40, 5)         # due
        await pool.execute("ANALYZE consents")
        plan = "\n".join(r[0] for r in await pool.fetch(f"EXPLAIN {_q()['consent_expire_due']}", datetime.now(UTC)))
        assert "consents_active_expiry" in plan and "Seq Scan on consents" not in plan, plan
        async with pool.acquire() as conn:  # and the generic plan a connection may keep (PREPAREd: see executed_plan)
            generic = await executed_plan(conn, _q()["consent_expire_due"], f"'{datetime.now(UTC).isoformat()}'",
                                          "force_generic_plan")
        read = scans(generic)
        assert ("Index Scan", "consents", "consents_active_expiry") in read or \
            ("Bitmap Index Scan", None, "consents_active_expiry") in read, read
        assert not any(node == "Seq Scan" and relation == "consents" for node, relation, _ in read), read
        await records.expire_due(pool, datetime.now(UTC))
        assert await pool.fetchval("SELECT count(*) FROM consents WHERE state = 'expired'") == 5
        assert await pool.fetchval("SELECT count(*) FROM consent_events WHERE event = 'expired'") == 5
        assert await pool.fetchval("SELECT count(*) FROM consents WHERE state = 'active'") == 2_000
    finally:
        await pool.close()
