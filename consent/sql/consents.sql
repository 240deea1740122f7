-- Named queries of consent records. Parameters are always $n.

-- name: consent_insert
INSERT INTO consents (id, subject_key, identity_ciphertext, controller, controller_name, recipient, habilitation_id,
                      dataset, dataset_version, provider, purpose, fields, fields_refused, legal_basis_title,
                      legal_basis_url, state, frequency, max_uses, created_at, decided_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19, $20)
RETURNING *;

-- name: consent_event
INSERT INTO consent_events (consent_id, event, at, detail) VALUES ($1, $2, $3, $4);

-- name: consent_get
SELECT * FROM consents WHERE id = $1;

-- name: consents_of_subject
SELECT * FROM consents WHERE subject_key = $1 ORDER BY created_at DESC;

-- name: consent_events_of
SELECT event, at, detail FROM consent_events WHERE consent_id = $1 ORDER BY at;

-- name: consent_use
-- Atomic: two exchanges racing for a one-time consent cannot both get it.
WITH used AS (
    UPDATE consents
    SET uses = uses + 1, last_used_at = $2,
        state = CASE WHEN max_uses IS NOT NULL AND uses + 1 >= max_uses THEN 'used_up' ELSE state END
    WHERE id = $1 AND state = 'active' AND expires_at > $2 AND (max_uses IS NULL OR uses < max_uses)
    RETURNING *
), event AS (
    INSERT INTO consent_events (consent_id, event, at) SELECT id, 'used', $2 FROM used
)
SELECT * FROM used;

-- name: consent_revoke
WITH revoked AS (
    UPDATE consents SET state = 'revoked', revoked_at = $3
    WHERE id = $1 AND subject_key = $2 AND state = 'active'
    RETURNING *
), event AS (
    INSERT INTO consent_events (consent_id, event, at) SELECT id, 'revoked', $3 FROM revoked
), notify AS (
    SELECT pg_notify('dlnuf_consent', id::text) FROM revoked
)
SELECT revoked.* FROM revoked, notify;

-- name: consent_expire_due
WITH expired AS (
    UPDATE consents SET state = 'expired' WHERE state = 'active' AND expires_at <= $1 RETURNING id
)
INSERT INTO consent_events (consent_id, event, at) SELECT id, 'expired', $1 FROM expired;

-- name: authorization_request_insert
INSERT INTO authorization_requests (id, client_id, redirect_uri, state, code_challenge, authorization_details,
                                    habilitation_id, expires_at, browser_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: authorization_request_get
SELECT * FROM authorization_requests WHERE id = $1;

-- name: authorization_request_claim
-- The first citizen session to open the consent screen claims the request; later, only it finds the request.
UPDATE authorization_requests SET session_id = $2 WHERE id = $1 AND (session_id IS NULL OR session_id = $2)
RETURNING id;

-- name: authorization_request_decide
-- Decided once, by the session that claimed it ($3), or (a cancel at the OP, before any login: $3 NULL) unclaimed.
UPDATE authorization_requests SET decided_at = $2
WHERE id = $1 AND decided_at IS NULL AND expires_at > $2 AND session_id IS NOT DISTINCT FROM $3
RETURNING *;

-- name: code_insert
INSERT INTO authorization_codes (code_hash, consent_id, consent_ids, client_id, redirect_uri, code_challenge,
                                 expires_at)
VALUES ($1, ($2::uuid[])[1], $2, $3, $4, $5, $6);

-- name: code_redeem
-- Single use: the first redemption marks it; any later one finds used_at set.
UPDATE authorization_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL
RETURNING *, (expires_at > $2) AS fresh;

-- name: code_find
SELECT * FROM authorization_codes WHERE code_hash = $1;

-- name: refresh_insert
INSERT INTO refresh_tokens (token_hash, consent_id, consent_ids, client_id, expires_at)
VALUES ($1, ($2::uuid[])[1], $2, $3, $4);

-- name: refresh_get
SELECT * FROM refresh_tokens WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2;

-- name: par_insert
INSERT INTO pushed_authorization_requests (request_uri_sha256, client_id, parameters, expires_at)
VALUES ($1, $2, $3, $4);

-- name: par_consume
-- Single use: the first presentation marks it, fresh or not; any later one finds used_at set.
UPDATE pushed_authorization_requests SET used_at = $2 WHERE request_uri_sha256 = $1 AND used_at IS NULL
RETURNING *, (expires_at > $2) AS fresh;

-- name: par_purge
DELETE FROM pushed_authorization_requests WHERE expires_at < $1;
