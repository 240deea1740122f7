-- Replay protection and the access log.

-- A nonce is remembered until its signature could no longer be accepted anyway (created + skew, or expires).
CREATE TABLE seen_nonces (
    kid         text NOT NULL,
    nonce       text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (kid, nonce)
);
CREATE INDEX seen_nonces_expires_at ON seen_nonces (expires_at);

-- One row per attempt, refused ones included. Never the subject's identity in clear: `subject_key` is a keyed
-- hash of the normalised identity, so one citizen's entries can be found without the log naming anyone.
CREATE TABLE access_log (
    id                  uuid PRIMARY KEY,
    logged_at           timestamptz NOT NULL DEFAULT now(),
    request_id          text NOT NULL,
    consumer            text,
    kid                 text,
    dataset             text,
    dataset_version     integer,
    purpose             text,
    recipient           text,
    habilitation_id     text,
    legal_basis_type    text,
    legal_basis_title   text,
    legal_basis_url     text,
    fields_requested    text[] NOT NULL DEFAULT '{}',
    fields_released     text[] NOT NULL DEFAULT '{}',
    outcome             text NOT NULL CHECK (outcome IN ('released', 'refused', 'failed')),
    problem_type        text,
    http_status         integer NOT NULL,
    latency_ms          double precision NOT NULL,
    payload_sha256      text,
    subject_key         text,
    CHECK ((outcome = 'released') = (payload_sha256 IS NOT NULL))
);
CREATE INDEX access_log_subject ON access_log (subject_key, logged_at) WHERE subject_key IS NOT NULL;
CREATE INDEX access_log_consumer ON access_log (consumer, logged_at);
CREATE INDEX access_log_logged_at ON access_log (logged_at);
