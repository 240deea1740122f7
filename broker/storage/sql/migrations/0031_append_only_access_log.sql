-- The access log becomes strictly append-only (issue 14): a row is never updated, not even to receive its leaf
-- index. The integrator used to give each row its index with `UPDATE access_log SET log_index`. Each such update
-- wrote a new version of a ~700-byte row and an entry in five of its seven indexes: about 1.4 kB of WAL per row,
-- as much WAL as the exchanges' own inserts (benchmarks/integrator_round.py, « WAL »), committed and flushed in
-- one round. The exchanges' commits waited behind that flush (pg_stat_activity during the slowest requests at
-- 200/s: WALSync and the WALWrite lock), and its dead row versions fed autovacuum.
--
-- Now:
-- - tlog_entries maps each leaf index to its entry (log_index -> entry id, logged_at, the partition key). It only
--   grows: pruning an entry keeps its line, so an index is given once in the log's whole life (its primary key),
--   across months (UNIQUE (log_index, logged_at) held within a month only, the guard across them).
-- - tlog_queue holds the entries not yet in the tree. A statement trigger on access_log writes their lines, in the
--   inserting statement's transaction, whoever inserts (a broker of the previous release during a rolling upgrade,
--   COPY): an entry cannot escape integration by being written some other way. The broker role may only read the
--   queue and delete a line whose entry already has its index; the integrator takes the lines in `seq` order.
-- - An entry is (id, logged_at), access_log's primary key: id alone is unique only within a month's partition, so
--   every line that names an entry names both.
-- - access_log loses log_index, and with it three indexes: UNIQUE (log_index, logged_at), the pending rows' and the
--   v1 rows' (tlog_entries marks its v1 lines). Its guard refuses every UPDATE.

-- Nothing writes the log while it is copied: a broker of the previous release, still serving, would otherwise
-- commit an index or an entry between the copies below, and it would be lost. Reads go on; writes wait for the
-- end of this migration (and those of the previous release then fail, the column they write being gone).
LOCK TABLE access_log IN EXCLUSIVE MODE;

CREATE TABLE tlog_entries (
    log_index   bigint PRIMARY KEY CHECK (log_index >= 0),
    entry_id    uuid NOT NULL,
    logged_at   timestamptz NOT NULL,
    v1          boolean NOT NULL DEFAULT false,  -- a v1 leaf (before migration 0010): its entry is not public
    UNIQUE (entry_id, logged_at)
);
-- The last v1 index, which GET /v1/log names (public entry bundles start after it): a max over a few lines.
CREATE INDEX tlog_entries_v1 ON tlog_entries (log_index) WHERE v1;

CREATE TABLE tlog_queue (
    seq         bigint PRIMARY KEY,
    entry_id    uuid NOT NULL,
    logged_at   timestamptz NOT NULL
);

-- Every index given so far: the rows', then the pruned entries'. A database whose log was tampered with (two rows,
-- or a row and a tombstone, holding one index) makes this fail on the primary key, naming the index, rather than
-- keep one of them and lose the evidence: run `log verify`, deal with what it reports, then migrate.
INSERT INTO tlog_entries (log_index, entry_id, logged_at, v1)
SELECT log_index, id, logged_at, leaf_version = 1 FROM access_log WHERE log_index IS NOT NULL;
-- a v1 tombstone has no public leaf (migration 0010)
INSERT INTO tlog_entries (log_index, entry_id, logged_at, v1)
SELECT log_index, entry_id, logged_at, leaf_data IS NULL FROM tlog_pruned;
INSERT INTO tlog_queue (seq, entry_id, logged_at)
SELECT seq, id, logged_at FROM access_log WHERE log_index IS NULL;

-- A tombstone names its entry by (id, logged_at) too: two entries of different months may share an id.
ALTER TABLE tlog_pruned DROP CONSTRAINT tlog_pruned_entry_id_key, ADD UNIQUE (entry_id, logged_at);

-- The new guard goes in before the column goes: the old one reads NEW.log_index.
CREATE OR REPLACE FUNCTION access_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'access_log entry % is immutable', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    ELSIF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM tlog_pruned WHERE entry_id = OLD.id AND logged_at = OLD.logged_at) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'access_log entry % can only be removed by log prune', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION 'access_log cannot be truncated' USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

DROP INDEX access_log_pending, access_log_v1;
ALTER TABLE access_log DROP CONSTRAINT access_log_log_index_key;
ALTER TABLE access_log DROP COLUMN log_index;

-- An index is given once, to an entry that is in the access log (its v1 mark true to the row), and only if the
-- integrator stored its leaf (it writes the nodes, then the entries, in one transaction). Nothing is ever updated
-- or deleted here.
CREATE FUNCTION tlog_entries_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM tlog_nodes WHERE level = 0 AND idx = NEW.log_index) THEN
            RAISE EXCEPTION 'log index % is not a stored leaf of the tree', NEW.log_index
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM access_log WHERE id = NEW.entry_id AND logged_at = NEW.logged_at
                       AND (leaf_version = 1) = NEW.v1) THEN
            RAISE EXCEPTION 'log index % names no access-log entry (%)', NEW.log_index, NEW.entry_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'tlog_entries is append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER tlog_entries_guard BEFORE INSERT OR UPDATE OR DELETE ON tlog_entries
    FOR EACH ROW EXECUTE FUNCTION tlog_entries_guard();
CREATE TRIGGER tlog_entries_no_truncate BEFORE TRUNCATE ON tlog_entries
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_entries_guard();

-- Every statement that inserts into access_log queues what it inserted (one INSERT per statement, from its
-- transition table). SECURITY DEFINER: the function runs as its owner, so the broker role needs no INSERT on the
-- queue and cannot forge a line. Rows moved between partitions by access_log_create_partition go into a table not
-- yet attached: they are not queued again.
-- A row may reuse a pruned entry's (id, logged_at) (its row is gone, so the primary key allows it): it would
-- name an entry that already has its index, and wedge the integrator; it is refused. Nobody but this trigger may
-- run the function (EXECUTE revoked below), and only for access_log: a role that made a trigger of its own with
-- it could otherwise write any line into the queue as the owner.
CREATE FUNCTION access_log_enqueue() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    known uuid;
BEGIN
    IF TG_RELID <> 'access_log'::regclass THEN
        RAISE EXCEPTION 'access_log_enqueue() queues access_log''s rows only' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT a.id INTO known FROM added a
    WHERE EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = a.id AND x.logged_at = a.logged_at) LIMIT 1;
    IF known IS NOT NULL THEN
        RAISE EXCEPTION 'access_log entry % was logged before (it has its index)', known
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO tlog_queue (seq, entry_id, logged_at) SELECT seq, id, logged_at FROM added;
    RETURN NULL;
END;
$$;
REVOKE EXECUTE ON FUNCTION access_log_enqueue() FROM PUBLIC;
CREATE TRIGGER access_log_enqueue AFTER INSERT ON access_log
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION access_log_enqueue();

-- A line leaves the queue only once its entry has its index (the integrator inserts into tlog_entries first).
CREATE FUNCTION tlog_queue_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM tlog_entries WHERE entry_id = OLD.entry_id AND logged_at = OLD.logged_at) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'entry % has no index yet: it stays in the queue', OLD.entry_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION 'tlog_queue lines are only added by access_log''s trigger and removed once integrated'
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER tlog_queue_guard BEFORE UPDATE OR DELETE ON tlog_queue
    FOR EACH ROW EXECUTE FUNCTION tlog_queue_guard();
CREATE TRIGGER tlog_queue_no_truncate BEFORE TRUNCATE ON tlog_queue
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_queue_guard();

-- A month dropped whole: every row must have its tombstone (by entry, id and logged_at; the index is in
-- tlog_entries for good).
CREATE OR REPLACE FUNCTION access_log_drop_partition(part regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
    bare uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = part AND inhparent = 'access_log'::regclass)
       OR part = 'access_log_default'::regclass THEN
        RAISE EXCEPTION '% is not a monthly partition of access_log', part USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- No row may arrive between the check and the detach: it would go with the partition, without a tombstone.
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', part);
    EXECUTE format('SELECT a.id FROM %s a WHERE NOT EXISTS (SELECT 1 FROM tlog_pruned p '
                   'WHERE p.entry_id = a.id AND p.logged_at = a.logged_at) LIMIT 1', part) INTO bare;
    IF bare IS NOT NULL THEN
        RAISE EXCEPTION 'access_log entry % has no tombstone: partition % cannot be dropped', bare, part
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    EXECUTE format('DELETE FROM exchange_evidence e USING %s a WHERE e.entry_id = a.id AND e.logged_at = a.logged_at',
                   part);
    EXECUTE format('DELETE FROM notification_outbox o USING %s a WHERE o.entry_id = a.id', part);
    EXECUTE format('SELECT count(*) FROM %s', part) INTO total;
    EXECUTE format('ALTER TABLE access_log DETACH PARTITION %s', part);
    EXECUTE format('DROP TABLE %s', part);
    RETURN total;
END;
$$;
