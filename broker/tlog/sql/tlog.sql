-- Named queries of the transparency log and the notification outbox. Parameters are always $n.

-- name: tlog_head_lock
-- NULL (no row) when another process is integrating: it will take our rows too, so we skip this round.
SELECT size FROM tlog_head FOR UPDATE SKIP LOCKED;

-- name: tlog_head_size
SELECT size FROM tlog_head;

-- name: tlog_head_update
UPDATE tlog_head SET size = $1;

-- name: tlog_pending
-- The entry columns (see ENTRY_COLUMNS in broker/tlog/log.py) of committed rows not yet in the tree, oldest first.
SELECT id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient, habilitation_id,
       legal_basis_type, legal_basis_title, legal_basis_url, fields_requested, fields_released, outcome,
       problem_type, http_status, latency_ms, payload_sha256, subject_key
FROM access_log WHERE log_index IS NULL ORDER BY seq LIMIT $1;

-- name: tlog_status
-- The tree size, and when the oldest entry not yet integrated was committed (about logged_at + latency).
SELECT (SELECT size FROM tlog_head) AS size,
       (SELECT min(logged_at + latency_ms * interval '1 millisecond') FROM access_log WHERE log_index IS NULL)
           AS oldest_pending;

-- name: tlog_pending_late
SELECT id, logged_at FROM access_log
WHERE log_index IS NULL AND logged_at < now() - make_interval(secs => $1) ORDER BY seq LIMIT $2;

-- name: tlog_assign
UPDATE access_log SET log_index = a.log_index
FROM unnest($1::uuid[], $2::bigint[]) AS a(id, log_index)
WHERE access_log.id = a.id;

-- name: tlog_nodes_get
SELECT q.level, q.idx, n.hash
FROM unnest($1::smallint[], $2::bigint[]) AS q(level, idx)
JOIN tlog_nodes n ON n.level = q.level AND n.idx = q.idx;

-- name: tlog_checkpoint_insert
INSERT INTO tlog_checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING;

-- name: tlog_checkpoint_latest
SELECT size, note, created_at FROM tlog_checkpoints ORDER BY size DESC LIMIT 1;

-- name: tlog_checkpoint_at
SELECT size, note, created_at FROM tlog_checkpoints WHERE size = $1;

-- name: tlog_checkpoints_after
SELECT size, note, created_at FROM tlog_checkpoints WHERE size > $1 ORDER BY size LIMIT $2;

-- name: tlog_entry_index
-- The leaf index of an entry, whether its body is still there or was pruned.
SELECT log_index FROM access_log WHERE id = $1
UNION ALL
SELECT log_index FROM tlog_pruned WHERE entry_id = $1;

-- name: tlog_entry_known
SELECT EXISTS (SELECT 1 FROM access_log WHERE id = $1) OR EXISTS (SELECT 1 FROM tlog_pruned WHERE entry_id = $1);

-- name: tlog_range
-- Everything the log holds for leaf indices [$1, $2): the stored leaf, the row (several if indices were tampered
-- with), or the tombstone of a pruned entry. An index with neither row nor tombstone is a deleted entry.
SELECT i AS log_index, n.hash AS stored_leaf,
       a.id, a.logged_at, a.request_id, a.consumer, a.kid, a.dataset, a.dataset_version, a.purpose, a.recipient,
       a.habilitation_id, a.legal_basis_type, a.legal_basis_title, a.legal_basis_url, a.fields_requested,
       a.fields_released, a.outcome, a.problem_type, a.http_status, a.latency_ms, a.payload_sha256, a.subject_key,
       p.entry_id AS pruned_entry_id, p.logged_at AS pruned_logged_at, p.pruned_at
FROM generate_series($1::bigint, $2::bigint - 1) AS i
LEFT JOIN tlog_nodes n ON n.level = 0 AND n.idx = i
LEFT JOIN access_log a ON a.log_index = i
LEFT JOIN tlog_pruned p ON p.log_index = i
ORDER BY i, a.seq;

-- name: tlog_rows_outside
-- Rows whose index is not a leaf of the tree of size $1: inserted behind the integrator's back.
SELECT log_index, id FROM access_log WHERE log_index >= $1 ORDER BY log_index, seq LIMIT $2;

-- name: tlog_journal
-- One subject's entries, newest first, with optional filters ($2 since, $3 until, $4 consumer, $5 dataset).
SELECT log_index, id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
       habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url, fields_requested, fields_released,
       outcome, problem_type, http_status, latency_ms, payload_sha256, subject_key
FROM access_log
WHERE subject_key = $1
  AND ($2::timestamptz IS NULL OR logged_at >= $2)
  AND ($3::timestamptz IS NULL OR logged_at < $3)
  AND ($4::text IS NULL OR consumer = $4)
  AND ($5::text IS NULL OR dataset = $5)
ORDER BY logged_at DESC, id
LIMIT $6;

-- name: tlog_prune_candidates
-- Integrated entries older than their habilitation's retention (or $2, an ISO 8601 duration, for entries whose
-- habilitation is unknown or gone), as of $1.
SELECT a.log_index, a.id, a.logged_at, a.habilitation_id
FROM access_log a LEFT JOIN habilitations h ON h.id = a.habilitation_id
WHERE a.log_index IS NOT NULL AND a.logged_at < $1::timestamptz - COALESCE(h.retention, $2)::interval
ORDER BY a.log_index LIMIT $3;

-- name: tlog_prune_tombstones
INSERT INTO tlog_pruned (log_index, entry_id, logged_at, habilitation_id, pruned_at)
SELECT u.log_index, u.entry_id, u.logged_at, u.habilitation_id, $5::timestamptz
FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::text[]) AS u(log_index, entry_id, logged_at, habilitation_id);

-- name: tlog_prune_delete
DELETE FROM access_log WHERE id = ANY($1::uuid[]);

-- name: outbox_insert
INSERT INTO notification_outbox (entry_id) VALUES ($1);

-- name: outbox_claim
-- Lease due notifications: pushing next_attempt_at past the lease makes another worker skip them, and a worker that
-- dies mid-delivery only delays them by the lease.
UPDATE notification_outbox o SET next_attempt_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM (SELECT id FROM notification_outbox
      WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
      ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.entry_id, o.attempts, o.created_at;

-- name: outbox_payload
SELECT id, logged_at, subject_key, consumer, dataset, dataset_version, fields_released, purpose, recipient,
       habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url
FROM access_log WHERE id = ANY($1::uuid[]);

-- name: outbox_delivered
UPDATE notification_outbox SET delivered_at = now(), last_error = NULL WHERE id = $1;

-- name: outbox_failed
UPDATE notification_outbox SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3,
    gave_up_at = CASE WHEN $4 THEN now() END
WHERE id = $1;
