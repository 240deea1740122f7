-- Named queries of citizens' e-mail notifications (broker/notify). Parameters are always $n.

-- name: subscription_of_subject
SELECT id, subject_key, address_sealed, mode, created_at, confirmed_at, confirm_before, digest_from
FROM mail_subscriptions WHERE subject_key = $1;

-- name: subscription_lock_subject
-- Serialises one citizen's changes of choice (a double submit must not insert two subscriptions).
SELECT pg_advisory_xact_lock(hashtextextended('dlnuf/mail-subscription:' || $1, 0));

-- name: subscription_get
SELECT id, subject_key, address_sealed, mode, created_at, confirmed_at, confirm_before, digest_from
FROM mail_subscriptions WHERE id = $1;

-- name: subscription_delete_of_subject
DELETE FROM mail_subscriptions WHERE subject_key = $1 RETURNING id;

-- name: subscription_insert
INSERT INTO mail_subscriptions (id, subject_key, address_sealed, mode, created_at, confirmed_at, confirm_before,
                                digest_from)
VALUES ($1, $2, $3, $4, $5, $6, $7, $5)
RETURNING id, subject_key, address_sealed, mode, created_at, confirmed_at, confirm_before, digest_from;

-- name: subscription_mode
-- A new rhythm starts now: a weekly digest covers the week from the change, never before it.
UPDATE mail_subscriptions SET mode = $2, digest_from = $3 WHERE id = $1 AND mode <> $2;

-- name: subscription_confirm
UPDATE mail_subscriptions SET confirmed_at = $2, confirm_before = NULL, digest_from = $2
WHERE id = $1 AND confirmed_at IS NULL AND confirm_before > $2
RETURNING id, subject_key, address_sealed, mode, created_at, confirmed_at, confirm_before, digest_from;

-- name: subscription_delete
DELETE FROM mail_subscriptions WHERE id = $1 RETURNING id;

-- name: subscriptions_purge_unconfirmed
DELETE FROM mail_subscriptions WHERE confirmed_at IS NULL AND confirm_before <= $1;

-- name: mail_enqueue_confirmation
INSERT INTO mail_outbox (subscription_id, kind) VALUES ($1, 'confirmation');

-- name: mail_fan_out
-- Take notification-outbox rows not yet fanned out (one per released entry, committed with it), mark them, and
-- queue one access mail per confirmed subscriber who chose each access and subscribed before the entry. The
-- consent screen's preview is not an access to tell the citizen about: they were looking at it.
-- The lines taken are marked by id from an array, each one's entry is looked up by (id, logged_at) (migration 0032)
-- in its month's partition, and its subject's subscription by key: one probe each, whatever the statistics say
-- (OFFSET 0 keeps the planner from flattening the lateral subqueries, as in tlog.sql `tlog_pending`). As joins, with
-- a backlog in the statistics (a broker that ran without a mail relay leaves every released entry's line to fan out
-- once one is configured), the generic plan PostgreSQL keeps after five passes hashed the whole access log, every
-- subscription and, from 40,000 lines due, the whole outbox, for each 500 lines: a 300,000-entry log with 50,000
-- subscribers and 20,000 lines due, 350,000 rows read and 0.7 to 0.8 s a pass; now 500 entries read, 13 ms.
WITH marked AS (
    UPDATE notification_outbox o SET mail_fanned_out_at = now()
    WHERE o.id = ANY(ARRAY(SELECT id FROM notification_outbox WHERE mail_fanned_out_at IS NULL
                           ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING o.entry_id, o.logged_at
), queued AS (
    INSERT INTO mail_outbox (subscription_id, kind, entry_id, logged_at)
    SELECT s.id, 'access', a.id, a.logged_at
    FROM marked m
    CROSS JOIN LATERAL (SELECT id, logged_at, subject_key FROM access_log
                        WHERE id = m.entry_id AND logged_at = m.logged_at AND NOT (purpose = $2 AND recipient = $3)
                        OFFSET 0) a
    CROSS JOIN LATERAL (SELECT id FROM mail_subscriptions
                        WHERE subject_key = a.subject_key AND mode = 'each' AND confirmed_at <= a.logged_at
                        OFFSET 0) s
    ON CONFLICT (subscription_id, entry_id, logged_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS fanned_out, (SELECT count(*) FROM queued) AS queued;

-- name: mail_schedule_digests
-- Weekly subscribers whose week is over ($1 is now) get a digest of [digest_from, $1); their next week starts now.
-- Found in digest_from order by the partial index of migration 0037, and moved by id from an array rather than
-- joined back: the join hashed every subscription, custom plans included, and so did the search without the index
-- (50,000 subscribers, 10 due: 100,068 rows read, 33 to 45 ms on every pass of the mail worker; 30 rows, 1 ms now).
-- The week's start is read before the move, from the row `due` holds locked.
WITH due AS (
    SELECT id, digest_from FROM mail_subscriptions
    WHERE mode = 'weekly' AND confirmed_at IS NOT NULL AND digest_from <= $1::timestamptz - interval '7 days'
    ORDER BY digest_from LIMIT $2 FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE mail_subscriptions s SET digest_from = $1 WHERE s.id = ANY(ARRAY(SELECT id FROM due))
    RETURNING s.id
)
INSERT INTO mail_outbox (subscription_id, kind, period_start, period_end)
SELECT id, 'digest', due.digest_from, $1 FROM moved JOIN due USING (id)
RETURNING id;

-- name: mail_claim
-- Lease due mails, as outbox_claim does for the webhook: a worker that dies mid-delivery only delays them. Updated
-- by id from an array, as there too: joined back, with a backlog in the statistics (a relay down for hours), the
-- generic plan hashed the whole mail outbox for 20 mails (90,725 mails, 20,000 due: all read, 38 ms; 0.6 ms now).
UPDATE mail_outbox o SET next_attempt_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
WHERE o.id = ANY(ARRAY(SELECT id FROM mail_outbox
                       WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
                       ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING o.id, o.subscription_id, o.kind, o.entry_id, o.logged_at, o.period_start, o.period_end, o.attempts;

-- name: mail_entries
-- What an access mail names: when, which administration, which data. Never the values, never the fields. By
-- (id, logged_at): a row reusing the id in another month is not the mail's entry (migration 0034).
SELECT id, logged_at, consumer, dataset, dataset_version, habilitation_id FROM access_log
WHERE (id, logged_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]));

-- name: mail_digest_entries
-- The released accesses of one citizen in a digest's period, previews excepted.
SELECT id, logged_at, consumer, dataset, dataset_version, habilitation_id FROM access_log
WHERE subject_key = $1 AND logged_at >= $2 AND logged_at < $3 AND outcome = 'released'
  AND NOT (purpose = $4 AND recipient = $5)
ORDER BY logged_at;

-- name: mail_delivered
UPDATE mail_outbox SET delivered_at = now(), last_error = NULL WHERE id = $1;

-- name: mail_failed
UPDATE mail_outbox SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3,
    gave_up_at = CASE WHEN $4 THEN now() END
WHERE id = $1;

-- name: mail_purge_delivered
-- Every minute in every process: found by mail_outbox_done (migration 0037), not by reading 30 days of mails.
DELETE FROM mail_outbox WHERE (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL) AND created_at < $1;
