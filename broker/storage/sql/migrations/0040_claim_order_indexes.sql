-- The webhook's and the mails' claims (broker/tlog/sql/tlog.sql `outbox_claim`, broker/notify/sql/notify.sql
-- `mail_claim`, every pass of every process's workers) take the due lines in (next_attempt_at, id) order, and the
-- due indexes (migrations 0004 and 0016) held next_attempt_at alone: PostgreSQL read every line of the oldest time
-- to sort them by id before it could stop at the LIMIT. Lines share a time when one transaction writes them, since
-- next_attempt_at defaults to now(): the released entries of a group commit of the access log, the mails of a
-- fan-out pass (up to 500). Indexed on both columns, with the same predicates, a claim reads the lines it takes.
-- The old indexes go: each is a prefix of its successor, which serves whatever it served, and each is one more index
-- to write for every released exchange (notification_outbox) and every mail.
-- Building an index reads its whole table and blocks its writes meanwhile: the outbox keeps a line for every
-- released entry until `log prune` removes the entry, so every exchange's commit waits (docs/operations.md
-- « Migrations »: for a large outbox, build the index concurrently beforehand; the migration then keeps it). An
-- index left invalid by a failed concurrent build would be kept as well and never used, and so would an index, or
-- anything else, of the same name built otherwise (IF NOT EXISTS looks at the name only): refused, with the old
-- indexes still there (helper-45's review). Behind a long transaction the migration would wait, and every statement
-- on the two tables with it (DROP INDEX locks them whole, reads included): give up after 5 s instead; `migrate` can
-- be run again. The old indexes may have been dropped concurrently beforehand as well (docs/operations.md).
SET LOCAL lock_timeout = '5s';
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid
               WHERE c.oid IN (to_regclass('notification_outbox_claim'), to_regclass('mail_outbox_claim'))
                 AND (i.indexrelid IS NULL OR NOT i.indisvalid
                      OR pg_get_indexdef(c.oid) NOT LIKE
                         '% USING btree (next_attempt_at, id) WHERE ((delivered_at IS NULL) AND (gave_up_at IS NULL))'))
    THEN
        RAISE EXCEPTION 'notification_outbox_claim or mail_outbox_claim exists but is not the valid index this '
                        'migration builds (a failed concurrent build, or another definition): drop it, then migrate '
                        'again' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END;
$$;
CREATE INDEX IF NOT EXISTS notification_outbox_claim ON notification_outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX IF NOT EXISTS mail_outbox_claim ON mail_outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
DROP INDEX IF EXISTS notification_outbox_due, mail_outbox_due;
