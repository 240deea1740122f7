-- The access log partitioned by calendar month (UTC) on logged_at (issue 12, docs/operations.md « The access log's
-- partitions »): `log prune` drops a month whose every entry is past its retention as one partition, after its
-- tombstones, instead of deleting it row by row. Every column, default, CHECK, index and trigger of the table is kept;
-- what declarative partitioning cannot keep is replaced as follows.
--
-- - Uniqueness. A unique index of a partitioned table must contain the partition key, so the primary key becomes
--   (id, logged_at) and UNIQUE (log_index) becomes UNIQUE (log_index, logged_at): both unique within a month only.
--   log_index keeps a hard guarantee across months in the guard trigger below: the integrator (the only writer of
--   indices) may give an index only if it is a stored leaf that no other row and no tombstone holds. id is a random
--   UUID the broker draws (uuid4: a collision is a 2^-122 event); a released entry's id is also unique in
--   notification_outbox and every entry's in exchange_evidence and tlog_pruned. A side table of ids would cost
--   every exchange one more index insert for a guarantee uuid4 already gives.
-- - notification_outbox.entry_id REFERENCES access_log (id) cannot stay (a foreign key must name the referenced
--   table's whole unique key, so (id, logged_at)): dropped, as exchange_evidence never had one; `log prune` deletes
--   the outbox rows of the entries it removes, as it deletes their evidence.
-- - Partitions are tables: the broker's role cannot create them. The owner creates the coming months'
--   (`access_log_create_partition`, run by this migration, `migrate`, `log partitions` and `log prune`); rows of a
--   month nobody created land in the DEFAULT partition, so an exchange never fails for want of one, and the next
--   `log partitions` moves them into their month.
--
-- Converting copies every row once, in this migration's transaction: on a large log, plan the downtime (25 s for
-- a million rows on a busy 2-core machine, docs/operations.md).

ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_entry_id_fkey;

-- The old table steps aside with its index names and its identity sequence, which the new table takes.
ALTER TABLE access_log RENAME TO access_log_0028;
ALTER SEQUENCE access_log_seq_seq RENAME TO access_log_0028_seq_seq;
ALTER TABLE access_log_0028 DROP CONSTRAINT access_log_pkey, DROP CONSTRAINT access_log_log_index_key;
DROP INDEX access_log_subject, access_log_consumer, access_log_logged_at, access_log_pending, access_log_v1;

-- Columns in the order migrations 0002 to 0028 left them (SELECT * and COPY see the same table as before).
CREATE TABLE access_log (
    id                  uuid NOT NULL,
    logged_at           timestamptz NOT NULL DEFAULT now(),
    request_id          text NOT NULL,
    consumer            text,
    kid                 text,
    dataset             text,
    dataset_version     integer,
    purpose             text,
    recipient           text,
    habilitation_id     text,
    legal_basis_type    text,
    legal_basis_title   text,
    legal_basis_url     text,
    fields_requested    text[] NOT NULL DEFAULT '{}',
    fields_released     text[] NOT NULL DEFAULT '{}',
    outcome             text NOT NULL CONSTRAINT access_log_outcome_check
                            CHECK (outcome IN ('released', 'refused', 'failed')),
    problem_type        text,
    http_status         integer NOT NULL,
    latency_ms          double precision,
    payload_sha256      text,
    subject_key         text,
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    log_index           bigint CONSTRAINT access_log_log_index_check CHECK (log_index >= 0),
    leaf_version        smallint NOT NULL DEFAULT 1 CONSTRAINT access_log_leaf_version_check
                            CHECK (leaf_version IN (1, 2)),
    retention           text,
    latency_us          bigint CONSTRAINT access_log_latency_us_check CHECK (latency_us >= 0),
    payload_salt        bytea CONSTRAINT access_log_payload_salt_check CHECK (length(payload_salt) = 32),
    payload_commitment  text,
    request_signature_sha256 text,
    parameters          jsonb,
    call_context        text,
    call_object         text,
    leaf_hash           bytea CONSTRAINT access_log_leaf_hash_check CHECK (octet_length(leaf_hash) = 32),
    CONSTRAINT access_log_pkey PRIMARY KEY (id, logged_at),
    CONSTRAINT access_log_log_index_key UNIQUE (log_index, logged_at),
    CONSTRAINT access_log_released_payload CHECK (
        (leaf_version = 1 AND latency_ms IS NOT NULL AND (outcome = 'released') = (payload_sha256 IS NOT NULL))
        OR (leaf_version = 2 AND payload_sha256 IS NULL AND latency_ms IS NULL AND retention IS NOT NULL
            AND latency_us IS NOT NULL
            AND (outcome = 'released') = (payload_commitment IS NOT NULL)
            AND (payload_salt IS NULL) = (payload_commitment IS NULL))),
    CONSTRAINT access_log_call_context_length
        CHECK (char_length(call_context) <= 100 AND char_length(call_object) <= 50)
) PARTITION BY RANGE (logged_at);

CREATE INDEX access_log_subject ON access_log (subject_key, logged_at) WHERE subject_key IS NOT NULL;
CREATE INDEX access_log_consumer ON access_log (consumer, logged_at);
CREATE INDEX access_log_logged_at ON access_log (logged_at);
CREATE INDEX access_log_pending ON access_log (seq) WHERE log_index IS NULL;
CREATE INDEX access_log_v1 ON access_log (log_index) WHERE leaf_version = 1;

-- Where a row goes when its month has no partition yet (nobody ran `log partitions` for months): kept, warned
-- about (dlnuf_access_log_default_rows), moved out by the next `log partitions`.
CREATE TABLE access_log_default PARTITION OF access_log DEFAULT;

-- The guard of 0004, plus what UNIQUE (log_index) did before partitioning: an index is given once, to one entry,
-- and only an index the integrator has just stored a leaf for (the integrator writes the nodes, then the indices,
-- in one transaction; a concurrent transaction sees both or neither).
CREATE OR REPLACE FUNCTION access_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.log_index IS NULL AND NEW.log_index IS NOT NULL
           AND to_jsonb(NEW) - 'log_index' = to_jsonb(OLD) - 'log_index' THEN
            IF EXISTS (SELECT 1 FROM tlog_nodes WHERE level = 0 AND idx = NEW.log_index)
               AND NOT EXISTS (SELECT 1 FROM access_log WHERE log_index = NEW.log_index)
               AND NOT EXISTS (SELECT 1 FROM tlog_pruned WHERE log_index = NEW.log_index) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'access_log index % is not a free leaf of the tree', NEW.log_index
                USING ERRCODE = 'unique_violation';
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
-- A row trigger on the parent is cloned onto every partition, present and future; a TRUNCATE trigger is not, so
-- each partition gets its own (access_log_create_partition).
CREATE TRIGGER access_log_guard BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION access_log_guard();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_guard();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log_default
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_guard();

-- The month's partition, access_log_y2026m01: [2026-01-01T00:00Z, 2026-02-01T00:00Z). Creates it if missing,
-- moving the month's rows out of the default partition (their seq and every value unchanged; the guard is off on
-- the default partition for that one statement, in this transaction, which holds its lock). Returns the name of
-- the partition created, NULL when it existed. The owner's: the broker role can neither create nor alter tables.
CREATE FUNCTION access_log_create_partition(month date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    part text := format('access_log_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
    lo timestamptz := first::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (first + interval '1 month')::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE access_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    IF EXISTS (SELECT 1 FROM access_log_default WHERE logged_at >= lo AND logged_at < hi) THEN
        ALTER TABLE access_log_default DISABLE TRIGGER access_log_guard;
        EXECUTE format('WITH moved AS (DELETE FROM access_log_default WHERE logged_at >= $1 AND logged_at < $2 '
                       'RETURNING *) INSERT INTO %I SELECT * FROM moved', part) USING lo, hi;
        ALTER TABLE access_log_default ENABLE TRIGGER access_log_guard;
    END IF;
    EXECUTE format('ALTER TABLE access_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    EXECUTE format('CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION access_log_guard()', part);
    RETURN part;
END;
$$;

-- `log prune`'s last step for a month whose every entry is past its retention: only once every row of the
-- partition has its tombstone (the invariant the row guard keeps for row deletes: no entry disappears without
-- one), its evidence and outbox rows go, then the partition is detached and dropped. Returns its row count.
CREATE FUNCTION access_log_drop_partition(part regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
    bare uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = part AND inhparent = 'access_log'::regclass)
       OR part = 'access_log_default'::regclass THEN
        RAISE EXCEPTION '% is not a monthly partition of access_log', part USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SELECT a.id FROM %s a WHERE NOT EXISTS (SELECT 1 FROM tlog_pruned p '
                   'WHERE p.log_index = a.log_index AND p.entry_id = a.id) LIMIT 1', part) INTO bare;
    IF bare IS NOT NULL THEN
        RAISE EXCEPTION 'access_log entry % has no tombstone: partition % cannot be dropped', bare, part
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    EXECUTE format('DELETE FROM exchange_evidence e USING %s a WHERE e.entry_id = a.id', part);
    EXECUTE format('DELETE FROM notification_outbox o USING %s a WHERE o.entry_id = a.id', part);
    EXECUTE format('SELECT count(*) FROM %s', part) INTO total;
    EXECUTE format('ALTER TABLE access_log DETACH PARTITION %s', part);
    EXECUTE format('DROP TABLE %s', part);
    RETURN total;
END;
$$;

-- The months the rows are in, from the oldest to three months ahead, then the rows, then the old table.
SELECT access_log_create_partition(m::date)
FROM generate_series(date_trunc('month', LEAST((SELECT min(logged_at) FROM access_log_0028), now()) AT TIME ZONE 'UTC'),
                     date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months', interval '1 month') AS m;

INSERT INTO access_log (id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
                        habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url, fields_requested,
                        fields_released, outcome, problem_type, http_status, latency_ms, payload_sha256,
                        subject_key, seq, log_index, leaf_version, retention, latency_us, payload_salt,
                        payload_commitment, request_signature_sha256, parameters, call_context, call_object,
                        leaf_hash)
OVERRIDING SYSTEM VALUE
SELECT id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
       habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url, fields_requested,
       fields_released, outcome, problem_type, http_status, latency_ms, payload_sha256,
       subject_key, seq, log_index, leaf_version, retention, latency_us, payload_salt,
       payload_commitment, request_signature_sha256, parameters, call_context, call_object, leaf_hash
FROM access_log_0028;

-- seq goes on from where the old sequence was (rolled-back inserts included), so insertion order stays total.
SELECT setval(pg_get_serial_sequence('access_log', 'seq'), last_value, is_called) FROM access_log_0028_seq_seq;

DROP TABLE access_log_0028;
