-- The registry: who may ask what, with which keys. Loaded from a declarative file by `registry apply`.

CREATE TABLE organisations (
    siret       text PRIMARY KEY CHECK (siret ~ '^[0-9]{14}$'),
    name        text NOT NULL,
    roles       text[] NOT NULL CHECK (roles <@ ARRAY['consumer', 'provider']::text[] AND cardinality(roles) > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE organisation_keys (
    kid         text PRIMARY KEY,
    siret       text NOT NULL REFERENCES organisations (siret) ON DELETE CASCADE,
    alg         text NOT NULL CHECK (alg IN ('ed25519', 'ecdsa-p256-sha256')),
    jwk         jsonb NOT NULL,
    not_before  timestamptz,
    not_after   timestamptz,
    CHECK (not_before IS NULL OR not_after IS NULL OR not_before < not_after)
);

CREATE TABLE adapters (
    id          text PRIMARY KEY,
    provider    text NOT NULL REFERENCES organisations (siret),
    kind        text NOT NULL,
    datasets    text[] NOT NULL,
    options     jsonb NOT NULL
);

CREATE TABLE habilitations (
    id                  text PRIMARY KEY,
    consumer            text NOT NULL REFERENCES organisations (siret),
    dataset             text NOT NULL,
    purposes            text[] NOT NULL CHECK (cardinality(purposes) > 0),
    fields              text[] NOT NULL CHECK (cardinality(fields) > 0),
    recipients          text[] NOT NULL CHECK (cardinality(recipients) > 0),
    legal_basis_type    text NOT NULL CHECK (legal_basis_type IN ('information', 'proactive', 'consent')),
    legal_basis_title   text NOT NULL,
    legal_basis_url     text NOT NULL,
    retention           text NOT NULL,
    UNIQUE (consumer, dataset)
);

-- One row: bumped by every `registry apply` that changes something, so processes know when to reload.
CREATE TABLE registry_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     bigint NOT NULL,
    digest      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO registry_state (version, digest) VALUES (0, '');
