-- Refusals before a signature verified (unsigned, malformed, unknown key, bad signature, oversized, wrong media
-- type, replayed): see broker/service/attempts.py. They are not access-log rows: the access log is a permanent,
-- transparency-logged record of what consumers did, and a caller who proved no identity must not be able to grow
-- it. This table is a ring of at most N rows (N = DLNUF_ATTEMPTS_KEEP): attempt number `seq` goes to slot
-- `seq % N`, overwriting the oldest, so a flood costs a bounded table, never a growing one.
CREATE SEQUENCE unauthenticated_attempts_seq;
CREATE TABLE unauthenticated_attempts (
    slot            bigint PRIMARY KEY CHECK (slot >= 0),
    seq             bigint NOT NULL,
    at              timestamptz NOT NULL,
    request_id      text NOT NULL,
    source          text NOT NULL,          -- the peer address, as the broker saw it
    method          text NOT NULL,
    path            text NOT NULL,          -- at most 200 characters
    reason          text NOT NULL,          -- a stable code (broker.signing.messages.REASONS, or the HTTP layer's)
    problem_type    text NOT NULL,
    http_status     integer NOT NULL,
    kid             text,                   -- the keyid the request claimed, never verified
    repeated        integer NOT NULL DEFAULT 1 CHECK (repeated >= 1)
                                            -- > 1: one row for that many refusals of a source over its budget
);
-- No index beyond the slot: every flood writes here, and reading a ring of 100,000 rows whole is cheap.
