-- The transparency log over the access log (docs/transparency-log.md): leaf indices, the stored RFC 9162 tree,
-- signed checkpoints, pruning tombstones, and the notification outbox.

-- `seq` is the order rows were inserted in; the integrator takes committed rows in that order. `log_index` is the
-- leaf index, given once by the integrator in the transaction that stores the leaf and signs a checkpoint.
ALTER TABLE access_log ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE access_log ADD COLUMN log_index bigint UNIQUE CHECK (log_index >= 0);
CREATE INDEX access_log_pending ON access_log (seq) WHERE log_index IS NULL;

-- Perfect subtrees only (broker/tlog/merkle.py): node (level, idx) covers leaves [idx * 2^level, (idx + 1) * 2^level).
-- Level 0 holds the leaf hashes, which outlive pruned entries.
CREATE TABLE tlog_nodes (
    level   smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx     bigint NOT NULL CHECK (idx >= 0),
    hash    bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- One row: the tree size, and the row integrators lock (FOR UPDATE SKIP LOCKED) so only one integrates at a time.
CREATE TABLE tlog_head (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    size        bigint NOT NULL CHECK (size >= 0)
);
INSERT INTO tlog_head (size) VALUES (0);

-- Every checkpoint ever signed, as the exact signed note (C2SP tlog-checkpoint); its size is also the key.
CREATE TABLE tlog_checkpoints (
    size        bigint PRIMARY KEY CHECK (size >= 0),
    note        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- An entry whose body `log prune` removed: its leaf stays in tlog_nodes, so the tree and its proofs still hold.
CREATE TABLE tlog_pruned (
    log_index       bigint PRIMARY KEY CHECK (log_index >= 0),
    entry_id        uuid NOT NULL UNIQUE,
    logged_at       timestamptz NOT NULL,
    habilitation_id text,
    pruned_at       timestamptz NOT NULL DEFAULT now()
);

-- A released exchange to notify the citizen of, written in the transaction of its access-log row.
CREATE TABLE notification_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id        uuid NOT NULL UNIQUE REFERENCES access_log (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    last_error      text
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- Access-log rows are immutable: the only update is the integrator giving a row its index, once; the only delete
-- is `log prune`, which must first leave a tombstone for that index and entry. This guards against mistakes and
-- casual edits; against someone who can disable triggers, `log verify` and the signed checkpoints are the defence.
CREATE FUNCTION access_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.log_index IS NULL AND NEW.log_index IS NOT NULL
           AND to_jsonb(NEW) - 'log_index' = to_jsonb(OLD) - 'log_index' THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'access_log entry % is immutable', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    ELSIF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM tlog_pruned WHERE log_index = OLD.log_index AND entry_id = OLD.id) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'access_log entry % can only be removed by log prune', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION 'access_log cannot be truncated' USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER access_log_guard BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION access_log_guard();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_guard();

-- The tree, its checkpoints and its tombstones are append-only.
CREATE FUNCTION tlog_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER tlog_nodes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON tlog_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON tlog_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
CREATE TRIGGER tlog_pruned_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON tlog_pruned
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();
