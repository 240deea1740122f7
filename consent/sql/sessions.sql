-- Citizen sessions (consent/sessions.py). Parameters are always $n; tokens only ever appear as their SHA-256.

-- name: session_insert
INSERT INTO citizen_sessions (token_sha256, subject_key, oidc_issuer, oidc_sub, acr, sealed, csrf_token,
                              created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: session_get
SELECT subject_key, oidc_issuer, oidc_sub, acr, sealed, csrf_token, created_at, expires_at
FROM citizen_sessions WHERE token_sha256 = $1 AND expires_at > $2;

-- name: session_delete
DELETE FROM citizen_sessions WHERE token_sha256 = $1;

-- name: session_purge
DELETE FROM citizen_sessions WHERE expires_at <= $1;
