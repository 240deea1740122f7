-- The integrator's round checks its rows once per statement rather than once per row. tlog_entries' guard (an index
-- only for a stored leaf and an entry of the log, with the entry's v1 mark) and tlog_queue's (a line leaves only
-- once its entry has its index) were row triggers: a plpgsql call and one or two lookups per row (a 100-entry round:
-- 4.3 -> 4.1 ms of PostgreSQL CPU, 66 -> 58 kB of WAL, benchmarks/integrator_round.py; EXPLAIN ANALYZE's 1.34 ms for
-- the two triggers was inflated by its per-row instrumentation).
-- Now each is one query over the statement's transition table, raised from an AFTER statement trigger (the statement
-- and its transaction are undone, as before). Same rules, messages and error codes, but for what checking a
-- statement's end state changes (helper-31's review): a unique constraint refuses a duplicate line before the guard
-- sees it; the bad line named is the lowest index (the lowest seq for the queue), not the first inserted; COPY's
-- line number is not in the error; a writable CTE that both indexes an entry and dequeues it is accepted (its end
-- state is valid). UPDATE, DELETE and TRUNCATE are refused by statement triggers, whatever rows they would touch
-- (none included).

CREATE OR REPLACE FUNCTION tlog_entries_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'tlog_entries is append-only' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT a.log_index, a.entry_id,
           EXISTS (SELECT 1 FROM tlog_nodes n WHERE n.level = 0 AND n.idx = a.log_index) AS stored
    INTO bad
    FROM added a
    WHERE NOT EXISTS (SELECT 1 FROM tlog_nodes n WHERE n.level = 0 AND n.idx = a.log_index)
       OR NOT EXISTS (SELECT 1 FROM access_log l WHERE l.id = a.entry_id AND l.logged_at = a.logged_at
                      AND (l.leaf_version = 1) = a.v1)
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
DROP TRIGGER tlog_entries_guard ON tlog_entries;
CREATE TRIGGER tlog_entries_guard AFTER INSERT ON tlog_entries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tlog_entries_guard();
CREATE TRIGGER tlog_entries_no_change BEFORE UPDATE OR DELETE ON tlog_entries
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_entries_guard();

CREATE OR REPLACE FUNCTION tlog_queue_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bare uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT o.entry_id INTO bare
        FROM removed o
        WHERE NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = o.entry_id AND x.logged_at = o.logged_at)
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
DROP TRIGGER tlog_queue_guard ON tlog_queue;
CREATE TRIGGER tlog_queue_guard AFTER DELETE ON tlog_queue
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION tlog_queue_guard();
CREATE TRIGGER tlog_queue_no_update BEFORE UPDATE ON tlog_queue
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_queue_guard();

-- Every trigger function looks its tables up in public, then in pg_temp: unpinned, the caller's search_path put
-- pg_temp first, and a temporary table of the broker role's named access_log, tlog_nodes or tlog_entries stood in
-- for the real one in the guards' checks (an index given to an entry that does not exist, a queue line dropped
-- before its index; helper-31's review, possible since 0031), or received key_history's rows. access_log_enqueue
-- was pinned already; a test keeps every trigger function of later migrations pinned too.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'public'::regnamespace AND p.prorettype = 'trigger'::regtype
               AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c WHERE c LIKE 'search\_path=%')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = public, pg_temp', f);
    END LOOP;
END;
$$;
