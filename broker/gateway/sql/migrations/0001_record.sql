-- The gateway's record: what it signed and sent to the broker and what came back, kept by the consumer
-- administration as its own evidence. A row is written before the request leaves, so a lost answer still shows
-- the request, and completed before anything is passed on to the form service. This is the gateway's database,
-- never the broker's: its migrations are counted in gateway_schema_migrations.
CREATE TABLE gateway_calls (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('exchange', 'token', 'par')),
    sent_at timestamptz NOT NULL,
    -- how the caller was admitted: loopback, unix, secret, or mtls:<subject of its certificate>
    caller text NOT NULL,
    consumer text NOT NULL,
    kid text NOT NULL,
    target_uri text NOT NULL,
    -- exchanges: the RFC 9421 nonce; OAuth calls: the client assertion's jti
    nonce text NOT NULL,
    -- the fields sent with their signature (Content-Type, Content-Digest, Signature-Input, Signature), without
    -- Authorization: an access token is noted as with_token, never kept
    request_headers jsonb NOT NULL,
    with_token boolean NOT NULL DEFAULT false,
    -- exchanges: the JSON body sent (it names the citizen); OAuth calls: NULL (codes and verifiers are secrets)
    request_body bytea,
    answered_at timestamptz,
    outcome text NOT NULL DEFAULT 'sent'
        CHECK (outcome IN ('sent', 'released', 'refused', 'failed', 'unverified', 'unreachable')),
    status integer,
    -- exchanges: the broker's problem type; OAuth calls: the RFC 6749 error code
    problem_type text,
    -- why an answer did not verify, or why the broker could not be reached
    reason text,
    verification text CHECK (verification IN ('bound', 'unbound')),
    broker_request_id text,
    log_entry_id uuid,
    inclusion_promise text,
    -- the broker's answer as received: its signed fields and body (an exchange's data; OAuth calls: NULL, tokens
    -- are secrets)
    response_headers jsonb,
    response_body bytea,
    CONSTRAINT gateway_calls_nonce_once UNIQUE (kid, nonce),
    CONSTRAINT gateway_calls_answered CHECK ((outcome = 'sent') = (answered_at IS NULL))
);

CREATE INDEX gateway_calls_sent_at ON gateway_calls (sent_at);
CREATE INDEX gateway_calls_log_entry ON gateway_calls (log_entry_id) WHERE log_entry_id IS NOT NULL;
