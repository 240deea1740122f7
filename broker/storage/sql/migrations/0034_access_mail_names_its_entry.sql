-- An access mail names its entry by (id, logged_at), as its notification does since migration 0032. By id alone,
-- the worker read every access-log row of that id when it composed the mail, and whichever came last in the answer
-- was described: a row reusing the entry's id in another month (the broker role may insert one) gave the citizen
-- its day and its dataset.

ALTER TABLE mail_outbox ADD COLUMN logged_at timestamptz;

-- The mails there already. The fan-out wrote each in the statement that marked its notification line, so the line
-- whose mail_fanned_out_at is the mail's created_at (both that transaction's now()) names the entry; after it, a row
-- of the subscriber's subject (the fan-out joined on it), released, logged nearest the mail.
UPDATE mail_outbox o SET logged_at = f.logged_at
FROM (SELECT DISTINCT ON (m.id) m.id, a.logged_at
      FROM mail_outbox m
      JOIN mail_subscriptions s ON s.id = m.subscription_id
      JOIN access_log a ON a.id = m.entry_id
      LEFT JOIN notification_outbox n ON n.entry_id = a.id AND n.logged_at = a.logged_at
      WHERE m.kind = 'access'
      ORDER BY m.id, (n.mail_fanned_out_at = m.created_at) IS TRUE DESC, (a.subject_key = s.subject_key) IS TRUE DESC,
               a.outcome = 'released' DESC, abs(extract(epoch FROM m.created_at - a.logged_at)), a.seq) f
WHERE o.id = f.id;

-- An access mail whose entry is gone has nothing to tell: the worker would mark it done unsent.
DELETE FROM mail_outbox WHERE kind = 'access' AND logged_at IS NULL;

-- Not nullable for a release, unlike notification_outbox.logged_at: a broker of the previous release fans out with
-- ON CONFLICT (subscription_id, entry_id), which no longer names a unique key, so its statement fails whole,
-- the marking of its notification lines with it, and a broker of this release fans those lines out. Mails are only
-- delayed during the rolling restart; none is queued without its entry's logged_at.
ALTER TABLE mail_outbox
    ADD CHECK ((kind = 'access') = (logged_at IS NOT NULL)),
    DROP CONSTRAINT mail_outbox_subscription_id_entry_id_key,
    ADD UNIQUE (subscription_id, entry_id, logged_at);
