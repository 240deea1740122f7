-- Named queries of the broker. Parameters are always $n.

-- name: registry_version
SELECT version FROM registry_state;

-- name: registry_lock
SELECT version, digest FROM registry_state FOR UPDATE;

-- name: registry_bump
UPDATE registry_state SET version = version + 1, digest = $1, applied_at = now() RETURNING version;

-- name: registry_notify
SELECT pg_notify('dlnuf_registry', $1);

-- name: organisations_all
SELECT siret, name, roles, redirect_uris, quota FROM organisations ORDER BY siret;

-- name: organisation_upsert
INSERT INTO organisations (siret, name, roles, redirect_uris, quota) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (siret) DO UPDATE SET name = EXCLUDED.name, roles = EXCLUDED.roles, redirect_uris = EXCLUDED.redirect_uris,
    quota = EXCLUDED.quota, updated_at = now();

-- name: organisation_delete
DELETE FROM organisations WHERE siret = $1;

-- name: keys_all
SELECT kid, siret, alg, jwk, not_before, not_after FROM organisation_keys ORDER BY kid;

-- name: key_upsert
INSERT INTO organisation_keys (kid, siret, alg, jwk, not_before, not_after) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (kid) DO UPDATE SET siret = EXCLUDED.siret, alg = EXCLUDED.alg, jwk = EXCLUDED.jwk,
    not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after;

-- name: key_delete
DELETE FROM organisation_keys WHERE kid = $1;

-- name: adapters_all
SELECT id, provider, kind, datasets, options FROM adapters ORDER BY id;

-- name: adapter_upsert
INSERT INTO adapters (id, provider, kind, datasets, options) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET provider = EXCLUDED.provider, kind = EXCLUDED.kind,
    datasets = EXCLUDED.datasets, options = EXCLUDED.options;

-- name: adapter_delete
DELETE FROM adapters WHERE id = $1;

-- name: habilitations_all
SELECT id, consumer, dataset, purposes, fields, recipients, legal_basis_type, legal_basis_title,
       legal_basis_url, retention, derived, quota
FROM habilitations ORDER BY id;

-- name: habilitation_upsert
INSERT INTO habilitations (id, consumer, dataset, purposes, fields, recipients, legal_basis_type,
                           legal_basis_title, legal_basis_url, retention, derived, quota)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (id) DO UPDATE SET consumer = EXCLUDED.consumer, dataset = EXCLUDED.dataset,
    purposes = EXCLUDED.purposes, fields = EXCLUDED.fields, recipients = EXCLUDED.recipients,
    legal_basis_type = EXCLUDED.legal_basis_type, legal_basis_title = EXCLUDED.legal_basis_title,
    legal_basis_url = EXCLUDED.legal_basis_url, retention = EXCLUDED.retention, derived = EXCLUDED.derived,
    quota = EXCLUDED.quota;

-- name: habilitation_delete
DELETE FROM habilitations WHERE id = $1;

-- name: nonce_claim
INSERT INTO seen_nonces (kid, nonce, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (kid, nonce) DO NOTHING RETURNING true;

-- name: nonce_claim_counted
-- The nonce claim, and, only when the nonce was new, one more exchange in each quota scope ($4, windows $5):
-- one statement, so a quota costs no round trip (broker/service/quotas.py). Run on the claims pool, whose commits
-- do not wait for the WAL flush. Windows follow the database's clock, the one every broker process shares.
-- One row per counted scope, or one row of NULLs.
WITH claim AS (
    INSERT INTO seen_nonces (kid, nonce, expires_at) VALUES ($1, $2, $3)
    ON CONFLICT (kid, nonce) DO NOTHING RETURNING true
), counted AS (
    INSERT INTO quota_usage AS q (scope, window_seconds, window_start, used)
    SELECT s.scope, s.w, (floor(extract(epoch FROM now()) / s.w) * s.w)::bigint, 1
    FROM unnest($4::text[], $5::integer[]) AS s(scope, w)
    WHERE EXISTS (SELECT 1 FROM claim)
    ON CONFLICT (scope) DO UPDATE SET
        used = CASE WHEN EXCLUDED.window_start > q.window_start THEN 1 ELSE q.used + 1 END,
        window_start = GREATEST(q.window_start, EXCLUDED.window_start)
    RETURNING q.scope, q.used, (q.window_start + q.window_seconds - extract(epoch FROM now()))::float8 AS reset
)
SELECT EXISTS (SELECT 1 FROM claim) AS claimed, counted.scope, counted.used, counted.reset
FROM (SELECT 1) AS one LEFT JOIN counted ON true;

-- name: nonce_claim_batch
-- The claims of concurrent exchanges in one statement (broker/service/claims.py), each as `nonce_claim_counted`
-- would make it: claim i is ($1[i], $2[i], $3[i]); its quota scopes are the rows of ($5, $6) whose $4 is i. Only
-- claimed nonces count. Each scope's counter moves once, by the number of its claims; the caller gives each claim
-- its own count from the total (the claims of one batch are consecutive: the counter's row lock is held until
-- commit). Counters are locked in scope order, as `nonce_claim_counted` does (consumer, then habilitation), so two
-- concurrent batches never wait on each other in a cycle. The caller sends no (kid, nonce) twice in one batch.
-- Rows: ('claimed', i) for each claimed nonce, ('counted', scope, used, reset) for each counted scope.
WITH input AS (
    SELECT kid, nonce, expires_at, ord
    FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS i(kid, nonce, expires_at, ord)
), claim AS (
    INSERT INTO seen_nonces (kid, nonce, expires_at) SELECT kid, nonce, expires_at FROM input
    ON CONFLICT (kid, nonce) DO NOTHING RETURNING kid, nonce
), claimed AS (
    SELECT i.ord FROM input i JOIN claim c ON c.kid = i.kid AND c.nonce = i.nonce
), counted AS (
    INSERT INTO quota_usage AS q (scope, window_seconds, window_start, used)
    SELECT s.scope, s.w, (floor(extract(epoch FROM now()) / s.w) * s.w)::bigint, count(*)
    FROM unnest($4::bigint[], $5::text[], $6::integer[]) AS s(ord, scope, w) JOIN claimed c ON c.ord = s.ord
    GROUP BY s.scope, s.w
    ORDER BY s.scope
    ON CONFLICT (scope) DO UPDATE SET
        used = CASE WHEN EXCLUDED.window_start > q.window_start THEN EXCLUDED.used ELSE q.used + EXCLUDED.used END,
        window_start = GREATEST(q.window_start, EXCLUDED.window_start)
    RETURNING q.scope, q.used, (q.window_start + q.window_seconds - extract(epoch FROM now()))::float8 AS reset
)
SELECT 'claimed' AS kind, ord, NULL::text AS scope, NULL::integer AS used, NULL::float8 AS reset FROM claimed
UNION ALL
SELECT 'counted', NULL, scope, used, reset FROM counted;

-- name: quota_purge
DELETE FROM quota_usage WHERE window_start + window_seconds < extract(epoch FROM now()) - 3600;

-- name: nonce_purge
DELETE FROM seen_nonces WHERE expires_at < now();

-- name: objection_exists
SELECT EXISTS (
    SELECT 1 FROM objections
    WHERE subject_key = $1 AND (consumer IS NULL OR consumer = $2) AND (dataset IS NULL OR dataset = $3)
);

-- name: objections_of_subject
SELECT id, consumer, dataset, created_at FROM objections WHERE subject_key = $1 ORDER BY created_at;

-- name: objection_insert
INSERT INTO objections (id, subject_key, consumer, dataset) VALUES ($1, $2, $3, $4)
ON CONFLICT (subject_key, consumer, dataset) DO NOTHING RETURNING id, consumer, dataset, created_at;

-- name: objection_delete
DELETE FROM objections WHERE id = $1 AND subject_key = $2 RETURNING id;

-- name: attempts_insert
-- A batch of unauthenticated attempts into the ring of $1 slots (migration 0008); a batch never exceeds $1 rows.
INSERT INTO unauthenticated_attempts AS a (slot, seq, at, request_id, source, method, path, reason, problem_type,
                                          http_status, kid, repeated)
SELECT s.n % $1, s.n, s.at, s.request_id, s.source, s.method, s.path, s.reason, s.problem_type, s.http_status,
       s.kid, s.repeated
FROM (SELECT nextval('unauthenticated_attempts_seq') AS n, u.*
      FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                  $9::integer[], $10::text[], $11::integer[])
           AS u(at, request_id, source, method, path, reason, problem_type, http_status, kid, repeated)) AS s
ON CONFLICT (slot) DO UPDATE SET seq = EXCLUDED.seq, at = EXCLUDED.at, request_id = EXCLUDED.request_id,
    source = EXCLUDED.source, method = EXCLUDED.method, path = EXCLUDED.path, reason = EXCLUDED.reason,
    problem_type = EXCLUDED.problem_type, http_status = EXCLUDED.http_status, kid = EXCLUDED.kid,
    repeated = EXCLUDED.repeated;

-- name: purposes_all
SELECT id, label FROM purposes ORDER BY id;

-- name: purpose_upsert
INSERT INTO purposes (id, label) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label;

-- name: purpose_delete
DELETE FROM purposes WHERE id = $1;

-- name: session_settings
-- A new session's settings (broker/storage/db.py), for the session: set_config(..., false) is SET.
SELECT set_config(name, value, false) FROM unnest($1::text[], $2::text[]) AS s(name, value);
