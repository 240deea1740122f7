-- Every broker process expires due consents every 30 seconds (consent/sql/consents.sql `consent_expire_due`), and
-- found them by reading the whole consents table: 38 to 40 ms and 9,000 pages at 199,000 consents (helper-35's
-- audit), for the few that fall due. Only active consents can fall due, so only they are indexed.
-- Building the index blocks writes to consents (a consent given, used, revoked) while it runs: 46 ms for a 50 MB
-- table. Behind a long transaction it would wait, and every write with it: give up after 5 s instead; `migrate`
-- can be run again.
SET LOCAL lock_timeout = '5s';
CREATE INDEX consents_active_expiry ON consents (expires_at) WHERE state = 'active';
