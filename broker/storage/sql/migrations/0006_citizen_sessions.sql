-- Citizen web sessions, opened by the OpenID Connect (FranceConnect) login: see consent/sessions.py.
-- The session token is never stored, only its SHA-256, so this table (or a backup of it) cannot be replayed as
-- cookies. `sealed` holds the pivot identity and the id_token (kept as the OP logout hint), AES-256-GCM under the
-- broker's sealing key and bound to this row's token hash: the broker needs the identity again to ask providers
-- on the citizen's behalf, and it must not sit readable in the database.
CREATE TABLE citizen_sessions (
    token_sha256    bytea PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    subject_key     text NOT NULL,
    oidc_issuer     text NOT NULL,
    oidc_sub        text NOT NULL,
    acr             text NOT NULL,
    sealed          bytea NOT NULL,
    csrf_token      text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
-- "log out everywhere" and the portal find a citizen's sessions by subject key; the purge goes by expiry
CREATE INDEX citizen_sessions_subject ON citizen_sessions (subject_key);
CREATE INDEX citizen_sessions_expiry ON citizen_sessions (expires_at);
