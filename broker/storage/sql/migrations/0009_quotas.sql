-- Quotas (broker/service/quotas.py): a consumer's and a habilitation's limit, from the registry, and the shared
-- per-window counters every broker process increments in the statement that claims the request's nonce.
ALTER TABLE organisations ADD COLUMN quota jsonb;
ALTER TABLE habilitations ADD COLUMN quota jsonb;

-- One row per scope (`c:<siret>:<window>` or `h:<habilitation>:<window>`): the current window and its count,
-- updated in place, so the table holds as many rows as there are scopes, not one per window. Its row lock is held
-- only while the claim statement runs: the claim commits without waiting for the WAL flush (quotas.py says why
-- that is safe), so a consumer's concurrent exchanges do not queue behind each other's fsync.
CREATE TABLE quota_usage (
    scope           text PRIMARY KEY,
    window_seconds  integer NOT NULL CHECK (window_seconds > 0),
    window_start    bigint NOT NULL,        -- epoch seconds, a multiple of window_seconds, by the database's clock
    used            integer NOT NULL CHECK (used >= 0)
);
