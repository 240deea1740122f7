-- name: node_key_record
-- The first node records its key; any later one finds the recorded key (which may differ from its own).
INSERT INTO node_keys (key_name, fingerprint, status) VALUES ($1, $2, 'current')
ON CONFLICT DO NOTHING;

-- name: node_key_current
SELECT fingerprint, recorded_at FROM node_keys WHERE key_name = $1 AND status = 'current';

-- name: node_key_retired
SELECT retired_at FROM node_keys WHERE key_name = $1 AND fingerprint = $2 AND status = 'retired';

-- name: node_key_retire
UPDATE node_keys SET status = 'retired', retired_at = now() WHERE key_name = $1 AND status = 'current'
RETURNING fingerprint;

-- name: node_key_adopt
INSERT INTO node_keys (key_name, fingerprint, status) VALUES ($1, $2, 'current')
ON CONFLICT (key_name, fingerprint) DO UPDATE SET status = 'current', retired_at = NULL;
