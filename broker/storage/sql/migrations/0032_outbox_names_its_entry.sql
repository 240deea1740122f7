-- A notification names its entry by (id, logged_at), as everything that names an entry does since migration 0031.
-- By id alone, a row reusing a genuine entry's id in another month (the broker role may insert one) was read with
-- it when the notification was delivered, and whichever came last in the answer was sent (its subject, consumer
-- and fields); pruning that row deleted the genuine entry's notification with it.

-- Nullable for one release: a broker of the previous release, still serving during the rolling restart, inserts
-- (entry_id) alone. The trigger below fills it in; the next release can make the column NOT NULL.
ALTER TABLE notification_outbox ADD COLUMN logged_at timestamptz;

-- The rows there already. Each was written by the transaction that wrote its entry's row: a row of that id with
-- the same xmin is the entry. That key holds only for a line never updated since (the mail fan-out marks every
-- line within a second, the webhook's claim counts its attempts, and migration 0029's copy rewrote the rows), so
-- after it: a released row (only those have a line), then the row logged nearest the line's created_at (the
-- now() of the transaction that wrote both; a copy lives in another month), and only then the one indexed first,
-- which a copy inserted with a lower seq can be. A row whose entry is gone keeps NULL: no entry is delivered or
-- pruned for it (the worker gives it up as before).
UPDATE notification_outbox o SET logged_at = f.logged_at
FROM (SELECT DISTINCT ON (n.id) n.id, a.logged_at
      FROM notification_outbox n
      JOIN access_log a ON a.id = n.entry_id
      LEFT JOIN tlog_entries x ON x.entry_id = a.id AND x.logged_at = a.logged_at
      ORDER BY n.id, a.xmin = n.xmin DESC, a.outcome = 'released' DESC,
               abs(extract(epoch FROM n.created_at - a.logged_at)), x.log_index NULLS LAST, a.seq) f
WHERE o.id = f.id;

-- Two entries of one id may each have their notification.
ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_entry_id_key, ADD UNIQUE (entry_id, logged_at);

-- A row inserted without logged_at (by a broker of the previous release) gets the logged_at of the access-log row
-- of that id its own transaction wrote (the same statement, log_batch_insert: an AFTER trigger sees it), never of
-- a row someone else wrote. The WHEN clause keeps the trigger off this release's inserts.
CREATE FUNCTION notification_outbox_logged_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE notification_outbox o SET logged_at = a.logged_at
    FROM access_log a
    WHERE o.id = NEW.id AND a.id = NEW.entry_id AND a.xmin = o.xmin;
    RETURN NULL;
END;
$$;
CREATE TRIGGER notification_outbox_logged_at AFTER INSERT ON notification_outbox
    FOR EACH ROW WHEN (NEW.logged_at IS NULL) EXECUTE FUNCTION notification_outbox_logged_at();

-- A month dropped whole takes its entries' notifications, by (id, logged_at): not those of other months' entries
-- that share an id.
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
    EXECUTE format('DELETE FROM notification_outbox o USING %s a WHERE o.entry_id = a.id AND o.logged_at = a.logged_at',
                   part);
    EXECUTE format('SELECT count(*) FROM %s', part) INTO total;
    EXECUTE format('ALTER TABLE access_log DETACH PARTITION %s', part);
    EXECUTE format('DROP TABLE %s', part);
    RETURN total;
END;
$$;
