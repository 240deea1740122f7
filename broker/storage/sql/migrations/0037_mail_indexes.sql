-- Every broker process schedules the weekly digests on every pass of its mail worker (broker/notify/sql/notify.sql
-- `mail_schedule_digests`, about once a second) and purges the unconfirmed subscriptions past their deadline every
-- minute (`subscriptions_purge_unconfirmed`). Both read every subscription to find the few due, custom plan or
-- generic: at 50,000 subscribers, 50,034 rows and 8 ms for the purge, twice that and 33 to 45 ms for the digests
-- (which also joined every subscription, until the statement changed with this migration). Only confirmed weekly
-- subscriptions get a digest and only unconfirmed ones are purged, so only they are indexed, each by the date that
-- makes it due: the digests read 30 rows for 10 due (1 ms), the purge 5 for 5 (0.1 to 0.3 ms).
-- Building them blocks writes to mail_subscriptions (a citizen choosing, confirming, unsubscribing) while they run:
-- 90 and 28 ms at 50,000 subscriptions. Behind a long transaction they would wait, and every write with them: give
-- up after 5 s instead; `migrate` can be run again.
SET LOCAL lock_timeout = '5s';
CREATE INDEX mail_subscriptions_weekly_due ON mail_subscriptions (digest_from)
    WHERE mode = 'weekly' AND confirmed_at IS NOT NULL;
CREATE INDEX mail_subscriptions_unconfirmed ON mail_subscriptions (confirm_before) WHERE confirmed_at IS NULL;

-- The same every minute for the mails sent or given up over 30 days ago (`mail_purge_delivered`): it read the whole
-- mail outbox, which keeps 30 days of mails (90,725 rows: 20 to 27 ms), to delete the minute's worth. Indexed where
-- they are done, by age: 26 rows read for 26 (0.1 ms). A mail enters the index when it is sent or given up; that
-- update already writes to every index of the table (delivered_at is in mail_outbox_due's predicate). 180 ms to
-- build on 90,725 mails, blocking the mail queue's writes meanwhile, under the same lock timeout.
CREATE INDEX mail_outbox_done ON mail_outbox (created_at) WHERE delivered_at IS NOT NULL OR gave_up_at IS NOT NULL;
