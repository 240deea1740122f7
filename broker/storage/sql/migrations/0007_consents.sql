-- Consent: OAuth clients' redirect URIs, pending authorization requests, consent records (ISO/IEC TS 27560
-- style), their events, authorization codes and refresh tokens.

ALTER TABLE organisations ADD COLUMN redirect_uris text[] NOT NULL DEFAULT '{}';

-- An authorization request waiting for the citizen's decision on the consent screen.
CREATE TABLE authorization_requests (
    id                      uuid PRIMARY KEY,
    client_id               text NOT NULL,
    redirect_uri            text NOT NULL,
    state                   text,
    code_challenge          text NOT NULL,
    authorization_details   jsonb NOT NULL,
    habilitation_id         text NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    expires_at              timestamptz NOT NULL,
    decided_at              timestamptz
);

CREATE TABLE consents (
    id                      uuid PRIMARY KEY,
    subject_key             text NOT NULL,
    identity_ciphertext     bytea NOT NULL,            -- the pivot identity, AES-GCM: needed to ask providers later
    controller              text NOT NULL,             -- consumer SIRET (the data controller)
    controller_name         text NOT NULL,
    recipient               text NOT NULL,
    habilitation_id         text NOT NULL,
    dataset                 text NOT NULL,
    dataset_version         integer NOT NULL,
    provider                text NOT NULL,             -- provider SIRET
    purpose                 text NOT NULL,
    fields                  text[] NOT NULL,           -- granted (after the citizen's opt-outs)
    fields_refused          text[] NOT NULL DEFAULT '{}',
    legal_basis_title       text NOT NULL,
    legal_basis_url         text NOT NULL,
    state                   text NOT NULL CHECK (state IN ('active', 'refused', 'revoked', 'expired', 'used_up')),
    method                  text NOT NULL DEFAULT 'web-form',
    frequency               text NOT NULL CHECK (frequency IN ('one_time', 'periodic')),
    max_uses                integer CHECK (max_uses IS NULL OR max_uses > 0),
    uses                    integer NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    decided_at              timestamptz,
    expires_at              timestamptz NOT NULL,
    revoked_at              timestamptz,
    last_used_at            timestamptz,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
CREATE INDEX consents_subject ON consents (subject_key, created_at DESC);

-- Timestamps of each event of a consent's life (given, refused, used, revoked, expired, used up).
CREATE TABLE consent_events (
    consent_id  uuid NOT NULL REFERENCES consents (id),
    event       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    detail      jsonb
);
CREATE INDEX consent_events_consent ON consent_events (consent_id, at);

-- Single-use codes and refresh tokens; only their SHA-256 is stored.
CREATE TABLE authorization_codes (
    code_hash       text PRIMARY KEY,
    consent_id      uuid NOT NULL REFERENCES consents (id),
    client_id       text NOT NULL,
    redirect_uri    text NOT NULL,
    code_challenge  text NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

CREATE TABLE refresh_tokens (
    token_hash      text PRIMARY KEY,
    consent_id      uuid NOT NULL REFERENCES consents (id),
    client_id       text NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);
