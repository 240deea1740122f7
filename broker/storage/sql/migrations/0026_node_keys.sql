-- The fingerprints of the keys every broker node must share (broker/storage/nodekeys.py): the response-signing
-- key, the log's note key, the subject-key secret, the identity-sealing key. The first node to start records them;
-- a node whose key differs refuses to start and says which. `keys rotate` retires the current one and records the
-- new one. A fingerprint never reveals a secret: public keys by their public form, secrets by an HMAC.
CREATE TABLE node_keys (
    key_name    text NOT NULL,
    fingerprint text NOT NULL,
    status      text NOT NULL CHECK (status IN ('current', 'retired')),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz,
    PRIMARY KEY (key_name, fingerprint)
);
CREATE UNIQUE INDEX node_keys_one_current ON node_keys (key_name) WHERE status = 'current';
