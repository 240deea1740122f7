-- The transparency log in the ecosystem (docs/transparency-log.md): leaf v2, tombstones that keep the public leaf,
-- witness cosignatures, the key history, and the evidence of each exchange.

-- Leaf v2: the retention the entry carries, an integer latency, a salted payload commitment (its salt goes to the
-- consumer and the citizen, never into the leaf) and the hash of the consumer's request signature. v1 rows keep
-- leaf_version 1 and still verify; the pipeline writes v2 from now on.
ALTER TABLE access_log ADD COLUMN leaf_version smallint NOT NULL DEFAULT 1 CHECK (leaf_version IN (1, 2));
ALTER TABLE access_log ADD COLUMN retention text;
ALTER TABLE access_log ADD COLUMN latency_us bigint CHECK (latency_us >= 0);
ALTER TABLE access_log ALTER COLUMN latency_ms DROP NOT NULL;  -- v2 rows keep latency_us only: no column off the leaf
ALTER TABLE access_log ADD COLUMN payload_salt bytea CHECK (length(payload_salt) = 32);
ALTER TABLE access_log ADD COLUMN payload_commitment text;
ALTER TABLE access_log ADD COLUMN request_signature_sha256 text;
-- Entry bundles start after the last v1 leaf: found through these, which stay as small as the v1 prefix.
CREATE INDEX access_log_v1 ON access_log (log_index) WHERE leaf_version = 1;
ALTER TABLE access_log DROP CONSTRAINT access_log_check;
ALTER TABLE access_log ADD CONSTRAINT access_log_released_payload CHECK (
    (leaf_version = 1 AND latency_ms IS NOT NULL AND (outcome = 'released') = (payload_sha256 IS NOT NULL))
    OR (leaf_version = 2 AND payload_sha256 IS NULL AND latency_ms IS NULL AND retention IS NOT NULL
        AND latency_us IS NOT NULL
        AND (outcome = 'released') = (payload_commitment IS NOT NULL)
        AND (payload_salt IS NULL) = (payload_commitment IS NULL)));

-- A v2 tombstone keeps the entry's public leaf: its retention and time stay checkable against the tree after the
-- body is gone, and the entry bundles that serve it never change.
ALTER TABLE tlog_pruned ADD COLUMN leaf_data bytea;
CREATE INDEX tlog_pruned_v1 ON tlog_pruned (log_index) WHERE leaf_data IS NULL;

-- Cosignatures of checkpoints by the configured witnesses (C2SP tlog-cosignature), each line exactly as the
-- witness returned it, verified before it is stored.
CREATE TABLE tlog_cosignatures (
    size        bigint NOT NULL REFERENCES tlog_checkpoints (size),
    witness     text NOT NULL,   -- <key name>+<key id hex>: one witness key
    line        text NOT NULL,
    signed_at   bigint NOT NULL, -- the cosignature's timestamp (POSIX seconds)
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (size, witness)
);
CREATE INDEX tlog_cosignatures_witness ON tlog_cosignatures (witness, size);
CREATE TRIGGER tlog_cosignatures_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON tlog_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION tlog_append_only();

-- Every public key that ever verified a request or signed an answer. `registry apply` deletes a removed key from
-- organisation_keys; here it is only retired, so the evidence it verified can still be checked.
CREATE TABLE key_history (
    thumbprint  text PRIMARY KEY,  -- RFC 7638, base64url
    kid         text NOT NULL,
    owner       text NOT NULL,     -- the organisation's SIRET, or 'broker' for the broker's response keys
    alg         text NOT NULL,
    jwk         jsonb NOT NULL,
    not_before  timestamptz,
    not_after   timestamptz,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

CREATE FUNCTION jwk_thumbprint(jwk jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT translate(rtrim(encode(sha256(convert_to(CASE jwk ->> 'kty'
        WHEN 'OKP' THEN format('{"crv":%s,"kty":"OKP","x":%s}', jwk -> 'crv', jwk -> 'x')
        WHEN 'EC' THEN format('{"crv":%s,"kty":"EC","x":%s,"y":%s}', jwk -> 'crv', jwk -> 'x', jwk -> 'y')
    END, 'UTF8')), 'base64'), '='), '+/', '-_')
$$;

CREATE FUNCTION key_history_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE key_history SET retired_at = now() WHERE thumbprint = jwk_thumbprint(OLD.jwk) AND retired_at IS NULL;
        RETURN OLD;
    END IF;
    INSERT INTO key_history (thumbprint, kid, owner, alg, jwk, not_before, not_after)
    VALUES (jwk_thumbprint(NEW.jwk), NEW.kid, NEW.siret, NEW.alg, NEW.jwk, NEW.not_before, NEW.not_after)
    ON CONFLICT (thumbprint) DO UPDATE SET not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after,
        retired_at = NULL;
    RETURN NEW;
END;
$$;
CREATE TRIGGER organisation_keys_history AFTER INSERT OR UPDATE OR DELETE ON organisation_keys
    FOR EACH ROW EXECUTE FUNCTION key_history_keep();
INSERT INTO key_history (thumbprint, kid, owner, alg, jwk, not_before, not_after)
SELECT jwk_thumbprint(jwk), kid, siret, alg, jwk, not_before, not_after FROM organisation_keys;

-- The evidence of an exchange (X-Road's message log): the consumer's exact request signature and its signature
-- base, the key that verified it (by thumbprint, in key_history), and the broker's signed answer (its signature
-- base covers the body's digest, never the values). Written in the transaction of the access-log row; keyed by
-- the entry id (no foreign key, so that access_log can be partitioned) and removed by `log prune` with it.
CREATE TABLE exchange_evidence (
    entry_id                uuid PRIMARY KEY,
    logged_at               timestamptz NOT NULL,
    request_label           text,
    request_signature       bytea,
    request_signature_base  bytea,
    request_key             text,    -- key_history.thumbprint
    response_status         integer NOT NULL,
    response_signature      bytea NOT NULL,
    response_signature_base bytea NOT NULL,
    response_key            text NOT NULL,
    CHECK ((request_signature IS NULL) = (request_signature_base IS NULL)
           AND (request_signature IS NULL) = (request_key IS NULL)
           AND (request_signature IS NULL) = (request_label IS NULL))
);
CREATE INDEX exchange_evidence_logged_at ON exchange_evidence (logged_at);

-- Evidence is immutable; only `log prune` removes it, after the entry's tombstone.
CREATE FUNCTION exchange_evidence_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM tlog_pruned WHERE entry_id = OLD.entry_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'exchange evidence % is immutable until its entry is pruned', OLD.entry_id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER exchange_evidence_guard BEFORE UPDATE OR DELETE ON exchange_evidence
    FOR EACH ROW EXECUTE FUNCTION exchange_evidence_guard();
