-- The three statement triggers that look up their transition table's rows in the log (access_log_enqueue on every
-- commit of exchanges, the guards of tlog_entries and tlog_queue on every integration round) probe each row by
-- index, whatever the tables' statistics were when the connection first ran them.
-- A query without parameters in a plpgsql function is planned once per connection and that plan is kept until a
-- table's statistics change (autovacuum's ANALYZE, once a tenth of the table is new; never, where it is off): the
-- broker's connections live for hours, and a plan made while the log was small, or analysed empty, joined the
-- statement's rows to the whole table. Measured on one connection whose plans were made on an analysed empty log (tests/tlog/test_tlog.py):
-- - access_log_enqueue read all of tlog_entries on every commit: 50 single commits after 4,000 entries, 200,500 rows;
-- - rounds of 200 read the whole month of access_log, all of tlog_entries and all of tlog_nodes, each round more:
--   the 5 rounds from 1,000 to 2,000 entries, 10,050, 8,050 and 16,072 rows. Now none, by sequential scan.
-- On a new database never analysed (a new broker's; every benchmark run's), tlog_entries' guard read every leaf of
-- tlog_nodes by index on every round instead: a round of 1,000 cost 30 ms of PostgreSQL CPU at 10,000 entries and
-- 109 ms at 50,000; now 29 and 31 (benchmarks/round_growth.py).
-- Each lookup is now a correlated subquery that OFFSET 0 keeps from becoming a join (as tlog_pending's, tlog.sql),
-- and each function plans without sequential scans: on a table analysed empty a sequential scan costs nothing, and
-- the subquery would have read the whole table once per row. With both, the plan is one index probe per row of
-- the statement (one partition's index for access_log, pruned at run time), whenever it was made.

CREATE OR REPLACE FUNCTION access_log_enqueue() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp SET enable_seqscan = off AS $$
DECLARE
    known uuid;
BEGIN
    IF TG_RELID <> 'access_log'::regclass THEN
        RAISE EXCEPTION 'access_log_enqueue() queues access_log''s rows only' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT a.id INTO known FROM added a
    WHERE EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = a.id AND x.logged_at = a.logged_at OFFSET 0)
    LIMIT 1;
    IF known IS NOT NULL THEN
        RAISE EXCEPTION 'access_log entry % was logged before (it has its index)', known
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO tlog_queue (seq, entry_id, logged_at) SELECT seq, id, logged_at FROM added;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION tlog_entries_guard() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'tlog_entries is append-only' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT a.log_index, a.entry_id,
           EXISTS (SELECT 1 FROM tlog_nodes n WHERE n.level = 0 AND n.idx = a.log_index OFFSET 0) AS stored
    INTO bad
    FROM added a
    WHERE NOT EXISTS (SELECT 1 FROM tlog_nodes n WHERE n.level = 0 AND n.idx = a.log_index OFFSET 0)
       OR NOT EXISTS (SELECT 1 FROM access_log l WHERE l.id = a.entry_id AND l.logged_at = a.logged_at
                      AND (l.leaf_version = 1) = a.v1 OFFSET 0)
    ORDER BY a.log_index
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF NOT bad.stored THEN
        RAISE EXCEPTION 'log index % is not a stored leaf of the tree', bad.log_index
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RAISE EXCEPTION 'log index % names no access-log entry (%)', bad.log_index, bad.entry_id
        USING ERRCODE = 'foreign_key_violation';
END;
$$;

CREATE OR REPLACE FUNCTION tlog_queue_guard() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET enable_seqscan = off AS $$
DECLARE
    bare uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT o.entry_id INTO bare
        FROM removed o
        WHERE NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = o.entry_id AND x.logged_at = o.logged_at
                          OFFSET 0)
        ORDER BY o.seq
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'entry % has no index yet: it stays in the queue', bare
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'tlog_queue lines are only added by access_log''s trigger and removed once integrated'
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
