-- Quotas (broker/service/quotas.py): a consumer's and a habilitation's limit, from the registry, and the shared
-- per-window counters every broker process increments in the statement that claims the request's nonce.
ALTER TABLE organisations ADD COLUMN quota jsonb;
ALTER TABLE habilitations ADD COLUMN quota jsonb;

-- The counters: for each scope (`c:<siret>:<window>` or `h:<habilitation>:<window>`), up to 64 shard rows holding
-- the current window and its count, updated in place. A scope's count is the sum of its shards in the current
-- window. Each database connection increments the shard of its backend, so concurrent exchanges of one consumer
-- never wait for each other's row lock (held until commit, hence through the WAL flush): one row per scope
-- capped a consumer at one exchange per commit flush.
CREATE TABLE quota_usage (
    scope           text NOT NULL,
    shard           smallint NOT NULL CHECK (shard >= 0),
    window_seconds  integer NOT NULL CHECK (window_seconds > 0),
    window_start    bigint NOT NULL,        -- epoch seconds, a multiple of window_seconds, by the database's clock
    used            integer NOT NULL CHECK (used >= 0),
    PRIMARY KEY (scope, shard)
);
