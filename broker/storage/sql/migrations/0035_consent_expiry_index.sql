-- Every broker process expires due consents every 30 seconds (consent/sql/consents.sql `consent_expire_due`), and
-- found them by reading the whole consents table: 38 to 40 ms and 9,000 pages at 199,000 consents (helper-35's
-- audit), for the few that fall due. Only active consents can fall due, so only they are indexed.
CREATE INDEX consents_active_expiry ON consents (expires_at) WHERE state = 'active';
