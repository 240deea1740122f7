-- Named queries of the transparency log and the notification outbox. Parameters are always $n.

-- name: tlog_head_lock
-- NULL (no row) when another process is integrating: it will take our rows too, so we skip this round.
-- set_config(..., true) is SET LOCAL without a round trip of its own: the round's statements are planned afresh every
-- round, against the tables as they are. A generic plan is kept for the connection's life, and one made while the
-- log was small read tlog_entries whole for every entry of every later round. Forcing generic plans (00578e1) did
-- that: 10 rounds of 1,000 on one connection, 28, 58, 95 ... 364 ms of PostgreSQL CPU. So did PostgreSQL's default
-- choice, which takes a generic plan after five executions: the integrator runs every second, idle rounds
-- included, so a new log got one made while it was empty (helper-36's review: 72, 142, 218 ... 883 ms). Planning
-- each round costs about a millisecond, once a second.
SELECT size, set_config('plan_cache_mode', 'force_custom_plan', true) AS plans FROM tlog_head FOR UPDATE SKIP LOCKED;

-- name: tlog_head_lock_wait
-- A stopping process's last round waits for the round another process holds: that round may have read the pending
-- rows before this process's last entries were committed. Custom plans, as above.
SELECT size, set_config('plan_cache_mode', 'force_custom_plan', true) AS plans FROM tlog_head FOR UPDATE;

-- name: tlog_head_update
UPDATE tlog_head SET size = $1;

-- name: tlog_pending
-- Committed entries not yet in the tree (the queue, migration 0031), oldest first: their stored leaf (migration
-- 0028) and what the lag gauge needs.
-- Each row is looked up by its primary key in its month's partition: the lateral subquery (OFFSET 0 keeps the
-- planner from flattening it) is what makes that the plan, whatever the queue's statistics say. A plain join was
-- planned as a merge join over the whole access log, every round (EXPLAIN ANALYZE: 27 ms for 100 entries of a
-- 20,000-row log, growing with the log).
-- A line whose row is gone (only someone who can bypass the guards can do that) is skipped, not counted against
-- the batch: it cannot stall the queue.
-- So is a line whose entry already has its index (access_log's trigger refuses to write one; only someone who can
-- bypass it could): integrating it again would fail every round. That check is one index probe per line, kept so
-- by OFFSET 0 as above: as an anti-join, with fresh statistics the planner expected it to keep a single line, so the
-- LIMIT no longer bounded it and it hashed the whole of tlog_entries every round, custom plans included (helper-35's
-- audit and helper-36's review: a 330,000-entry log with 18,000 pending, 97 to 160 ms a round; 3.4 to 5 ms with the
-- probe).
SELECT q.seq, a.id, a.leaf_hash, a.logged_at, a.latency_us, a.latency_ms, a.leaf_version
FROM tlog_queue q
CROSS JOIN LATERAL (SELECT id, leaf_hash, logged_at, latency_us, latency_ms, leaf_version FROM access_log
                    WHERE id = q.entry_id AND logged_at = q.logged_at OFFSET 0) a
WHERE NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = q.entry_id AND x.logged_at = q.logged_at OFFSET 0)
ORDER BY q.seq LIMIT $1;

-- name: tlog_pending_entries
-- The entry columns of pending rows without a stored leaf (committed before migration 0028), to canonicalize.
SELECT id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient, habilitation_id,
       legal_basis_type, legal_basis_title, legal_basis_url, fields_requested, fields_released, outcome,
       problem_type, http_status, latency_ms, payload_sha256, subject_key, leaf_version, retention, latency_us,
       payload_commitment, request_signature_sha256
FROM access_log a
WHERE (a.id, a.logged_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]));

-- name: tlog_status
-- The tree size, when the next entry to integrate (the queue's first) was committed (about logged_at + latency),
-- and how many rows (up to 1000: this runs every round) wait in the access log's default partition for their
-- month's. One lookup, however long the queue: this runs every round.
SELECT (SELECT size FROM tlog_head) AS size,
       (SELECT a.logged_at + COALESCE(a.latency_us / 1000.0, a.latency_ms) * interval '1 millisecond'
            FROM tlog_queue q
            CROSS JOIN LATERAL (SELECT logged_at, latency_us, latency_ms FROM access_log
                                WHERE id = q.entry_id AND logged_at = q.logged_at OFFSET 0) a
            ORDER BY q.seq LIMIT 1)
           AS oldest_pending,
       (SELECT count(*) FROM (SELECT 1 FROM access_log_default LIMIT 1000) d) AS default_rows;

-- name: tlog_pending_late
-- Entries older than the merge delay ($1 s) without an index, whatever the queue says (`log verify`, a full pass):
-- an anti-join of the whole access log with tlog_entries, about a second per million entries. Hashing tlog_entries
-- is right here, where every row is read: one index probe per row took 3.8 to 5.4 s at 300,000 entries, the hash
-- 0.6 to 0.7 s.
SELECT a.id, a.logged_at FROM access_log a
WHERE a.logged_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = a.id AND x.logged_at = a.logged_at)
ORDER BY a.seq LIMIT $2;

-- name: tlog_pending_late_since
-- The same, of the entries logged since $3 only (`log verify --state`): what that pass reads must grow with what
-- was logged since its last run, not with the log. So $3 is a condition of its own, where it was under an OR with
-- `$3 IS NULL`, which a generic plan can only filter with: on a 300,000-entry log, 20 entries added, it read every
-- row and hashed all of tlog_entries (300 to 480 ms; helper-35's audit found it). Each row's index is one probe, kept
-- so by OFFSET 0 as in tlog_pending: as an anti-join, custom plans too hashed the whole of tlog_entries once the
-- range held about 25,000 rows (a month of that log, a day of a log of 10 million entries a year).
SELECT a.id, a.logged_at FROM access_log a
WHERE a.logged_at < now() - make_interval(secs => $1) AND a.logged_at >= $3
  AND NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = a.id AND x.logged_at = a.logged_at OFFSET 0)
ORDER BY a.seq LIMIT $2;

-- name: tlog_assign
-- The round's entries get their indices (migration 0031)...
INSERT INTO tlog_entries (entry_id, logged_at, log_index, v1)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::boolean[]);

-- name: tlog_dequeue
-- ...then leave the queue: the queue's guard lets a line go only once tlog_entries holds its entry (checked at the
-- end of the statement, migration 0033).
DELETE FROM tlog_queue WHERE seq = ANY($1::bigint[]);

-- name: tlog_nodes_get
SELECT q.level, q.idx, n.hash
FROM unnest($1::smallint[], $2::bigint[]) AS q(level, idx)
JOIN tlog_nodes n ON n.level = q.level AND n.idx = q.idx;

-- name: tlog_checkpoint_insert
INSERT INTO tlog_checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING;

-- name: tlog_checkpoint_latest
-- Checkpoints are served with the witnesses' cosignature lines appended to the log's signature.
SELECT c.size, c.note || COALESCE(w.lines, '') AS note, c.created_at
FROM (SELECT * FROM tlog_checkpoints ORDER BY size DESC LIMIT 1) c
LEFT JOIN LATERAL (SELECT string_agg(line || E'\n', '' ORDER BY witness) AS lines
                   FROM tlog_cosignatures s WHERE s.size = c.size) w ON true;

-- name: tlog_checkpoint_latest_cosigned
-- The latest checkpoint at least $1 witnesses cosigned (the latest of all when $1 is 0). Walking down from the
-- latest checkpoint read every one a quorum has not cosigned yet, on every journal page and proof: 61 to 90 ms with
-- 50,000 of them (a witness down for a day: about 86,000), 580 to 700 ms when the quorum is never met (helper-35's
-- audit). No checkpoint above the $1-th largest of the witnesses' latest cosigned sizes can have $1 cosignatures, so
-- the walk starts there: the witnesses are found one index probe each (a recursive skip scan of
-- tlog_cosignatures_witness), and each one's latest cosigned size by one more.
WITH RECURSIVE witnesses(witness) AS (
    (SELECT witness FROM tlog_cosignatures ORDER BY witness LIMIT 1)
    UNION ALL
    SELECT (SELECT s.witness FROM tlog_cosignatures s WHERE s.witness > w.witness ORDER BY s.witness LIMIT 1)
    FROM witnesses w WHERE w.witness IS NOT NULL
), bound AS (
    SELECT CASE WHEN $1 <= 0 THEN 9223372036854775807
                ELSE COALESCE((SELECT latest
                               FROM (SELECT (SELECT max(s.size) FROM tlog_cosignatures s WHERE s.witness = w.witness)
                                            AS latest
                                     FROM witnesses w WHERE w.witness IS NOT NULL) k
                               ORDER BY latest DESC OFFSET $1 - 1 LIMIT 1), -1) END AS size
)
-- The bound is a condition of its own, not under an OR with $1 = 0: a generic plan (where $1 is unknown) can then
-- still make it the index scan's start (helper-37's review: under the OR, the generic plan read all 49,901).
SELECT c.size, c.note || COALESCE(w.lines, '') AS note, c.created_at
FROM tlog_checkpoints c
LEFT JOIN LATERAL (SELECT string_agg(line || E'\n', '' ORDER BY witness) AS lines, count(*) AS n
                   FROM tlog_cosignatures s WHERE s.size = c.size) w ON true
WHERE c.size <= (SELECT size FROM bound) AND w.n >= $1
ORDER BY c.size DESC LIMIT 1;

-- name: tlog_checkpoint_bare_latest
-- The latest checkpoint as the log signed it, without cosignatures: what is submitted to witnesses.
SELECT size, note FROM tlog_checkpoints ORDER BY size DESC LIMIT 1;

-- name: tlog_checkpoint_at
SELECT c.size, c.note || COALESCE(w.lines, '') AS note, c.created_at
FROM tlog_checkpoints c
LEFT JOIN LATERAL (SELECT string_agg(line || E'\n', '' ORDER BY witness) AS lines
                   FROM tlog_cosignatures s WHERE s.size = c.size) w ON true
WHERE c.size = $1;

-- name: tlog_checkpoints_after
SELECT c.size, c.note || COALESCE(w.lines, '') AS note, c.created_at
FROM (SELECT * FROM tlog_checkpoints WHERE size > $1 ORDER BY size LIMIT $2) c
LEFT JOIN LATERAL (SELECT string_agg(line || E'\n', '' ORDER BY witness) AS lines
                   FROM tlog_cosignatures s WHERE s.size = c.size) w ON true
ORDER BY c.size;

-- name: tlog_cosigned_size
-- The largest size this witness key ($1, <name>+<key id>) cosigned.
SELECT max(size) FROM tlog_cosignatures WHERE witness = $1;

-- name: tlog_cosignature_insert
INSERT INTO tlog_cosignatures (size, witness, line, signed_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (size, witness) DO NOTHING;

-- name: tlog_entry_index
-- The entries $1 names, each with its leaf index (NULL while it waits for one), whether its body is still there or
-- was pruned: the one logged at $2 (its receipt and its journal line give both), or, with $2 NULL, every entry of
-- that id, integrated or not. Two lines mean a row reused the id in another month; which one is genuine is not for
-- the log to guess: not the first index (a copy inserted while the genuine entry waited, with a lower `seq`
-- (OVERRIDING SYSTEM VALUE), holds it), nor the only integrated one (the copy may be integrated while the genuine
-- entry is still queued). The caller refuses, and asks for logged_at. The entries are those queued (every row of
-- access_log waits there for its index: the statement trigger writes the line), integrated, or pruned: not
-- access_log itself, whose empty partitions (next months', the default) are read by seq scans with $2 NULL. The
-- queue has no index on entry_id (one more per insert); it holds only the lines of the next rounds.
SELECT n.logged_at, x.log_index
FROM (SELECT logged_at FROM tlog_queue WHERE entry_id = $1 AND ($2::timestamptz IS NULL OR logged_at = $2)
      UNION
      SELECT logged_at FROM tlog_pruned WHERE entry_id = $1 AND ($2::timestamptz IS NULL OR logged_at = $2)
      UNION
      SELECT logged_at FROM tlog_entries WHERE entry_id = $1 AND ($2::timestamptz IS NULL OR logged_at = $2)) n
LEFT JOIN tlog_entries x ON x.entry_id = $1 AND x.logged_at = n.logged_at
LIMIT 2;

-- name: tlog_range
-- Everything the log holds for leaf indices [$1, $2): the stored leaf, the row its index names, or the tombstone
-- of a pruned entry. An index with neither row nor tombstone is a deleted entry. The row is looked up in the
-- partition of the logged_at tlog_entries gives; `stray_id` names the entry when it is not there (tlog_rows_by_id).
-- The lateral lookups (OFFSET 0: not flattened) keep the plan to index probes per index of the range, never a
-- scan of the whole log.
SELECT i AS log_index, n.hash AS stored_leaf,
       CASE WHEN a.id IS NULL AND p.log_index IS NULL THEN x.entry_id END AS stray_id,
       a.id, a.logged_at, a.request_id, a.consumer, a.kid, a.dataset, a.dataset_version, a.purpose, a.recipient,
       a.habilitation_id, a.legal_basis_type, a.legal_basis_title, a.legal_basis_url, a.fields_requested,
       a.fields_released, a.outcome, a.problem_type, a.http_status, a.latency_ms, a.payload_sha256, a.subject_key,
       a.leaf_version, a.retention, a.latency_us, a.payload_commitment, a.request_signature_sha256,
       p.entry_id AS pruned_entry_id, p.logged_at AS pruned_logged_at, p.pruned_at, p.habilitation_id AS pruned_habilitation,
       p.leaf_data AS pruned_leaf_data, h.retention AS pruned_habilitation_retention
FROM generate_series($1::bigint, $2::bigint - 1) AS i
LEFT JOIN LATERAL (SELECT hash FROM tlog_nodes WHERE level = 0 AND idx = i OFFSET 0) n ON true
LEFT JOIN LATERAL (SELECT * FROM tlog_entries WHERE log_index = i OFFSET 0) x ON true
LEFT JOIN LATERAL (SELECT * FROM access_log WHERE id = x.entry_id AND logged_at = x.logged_at OFFSET 0) a ON true
LEFT JOIN LATERAL (SELECT * FROM tlog_pruned WHERE log_index = i OFFSET 0) p ON true
LEFT JOIN habilitations h ON h.id = p.habilitation_id
ORDER BY i, a.seq;

-- name: tlog_rows_by_id
-- Rows whose logged_at is no longer the one their index was given with (someone changed it): found by id alone, in
-- every partition, so that `log verify` names them.
SELECT id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient, habilitation_id,
       legal_basis_type, legal_basis_title, legal_basis_url, fields_requested, fields_released, outcome,
       problem_type, http_status, latency_ms, payload_sha256, subject_key, leaf_version, retention, latency_us,
       payload_commitment, request_signature_sha256
FROM access_log WHERE id = ANY($1::uuid[]);

-- name: tlog_rows_outside
-- Indices that are not leaves of the tree of size $1: given behind the integrator's back.
SELECT log_index, entry_id AS id FROM tlog_entries WHERE log_index >= $1 ORDER BY log_index LIMIT $2;

-- name: tlog_journal
-- One subject's entries, newest first, with optional filters ($2 since, $3 until, $4 consumer, $5 dataset).
SELECT x.log_index, a.id, a.logged_at, a.request_id, a.consumer, a.kid, a.dataset, a.dataset_version, a.purpose,
       a.recipient, a.habilitation_id, a.legal_basis_type, a.legal_basis_title, a.legal_basis_url,
       a.fields_requested, a.fields_released, a.outcome, a.problem_type, a.http_status, a.latency_ms,
       a.payload_sha256, a.subject_key, a.leaf_version, a.retention, a.latency_us, a.payload_salt,
       a.payload_commitment, a.request_signature_sha256
FROM access_log a
LEFT JOIN LATERAL (SELECT log_index FROM tlog_entries WHERE entry_id = a.id AND logged_at = a.logged_at
                   OFFSET 0) x ON true
WHERE a.subject_key = $1
  AND ($2::timestamptz IS NULL OR a.logged_at >= $2)
  AND ($3::timestamptz IS NULL OR a.logged_at < $3)
  AND ($4::text IS NULL OR a.consumer = $4)
  AND ($5::text IS NULL OR a.dataset = $5)
ORDER BY a.logged_at DESC, a.id
LIMIT $6;

-- name: tlog_prune_serial
-- Run first in each transaction of `log prune` that takes candidates (SET LOCAL, for that transaction only): the
-- generic plan of tlog_prune_candidates, which PostgreSQL may keep after five batches, puts parallel workers on its v1
-- range, and starting them cost more than the statement. On a 300,000-entry log with 102,000 entries of four other
-- retentions and 2,000 v1 entries (benchmarks/prune_candidates.py, medians of 5 runs of 9): after a prune, 28 ms
-- with 2 workers, 5.9 without (custom plans, which get none, 5.2 either way); a batch of 1,000 due, 90 against 63.
-- A statement of its own, not set_config(..., true) folded into the candidates' as tlog_head_lock does: a setting
-- changes only the plans made after it, and the candidates' plan is made before that statement runs. The round trip
-- costs 0.1 ms a batch.
SELECT set_config('max_parallel_workers_per_gather', '0', true);

-- name: tlog_prune_candidates
-- Integrated entries older than their retention as of $1: the one a v2 entry carries, else its habilitation's, else
-- $2 (an ISO 8601 duration) for entries whose habilitation is unknown or gone; the first $3 by (logged_at, id).
-- Driven from access_log, each index looked up by (id, logged_at): the rows of pruned entries are gone, their lines in
-- tlog_entries stay, and a walk of tlog_entries would go through all of them first.
-- Each entry's cutoff is $1 minus its own retention, which no index bounds: as one condition, every run read the
-- whole log (an audit: 306 to 377 ms at 330,000 entries, linear in the log). So each retention r the log holds
-- (found by a recursive skip scan of access_log_retention, migration 0036) is one range of that index, from (r,
-- oldest) to (r, $1 - r), at most $3 entries of it, in its order. Then the v1 entries (retention NULL), which take
-- their habilitation's, else $2: the range of NULL retention below the latest cutoff any of them can have (from the
-- habilitations' retentions and $2, as timestamps: 'P1M' and 'P30D' are equal intervals, not equal cutoffs), each
-- entry filtered by its own cutoff. v1 entries are no longer written: that range only shrinks.
-- The index holds logged_at AT TIME ZONE 'UTC' (the same order), and the ranges and their order are written with it
-- so that no other index can serve them: written on logged_at, they were served by the index on logged_at alone in
-- some partitions (correlated with the table, so cheaper by the planner's estimates when retentions are interleaved),
-- which read every older entry of every retention.
WITH RECURSIVE retentions(r) AS (
    (SELECT retention FROM access_log WHERE retention IS NOT NULL ORDER BY retention LIMIT 1)
    UNION ALL
    SELECT (SELECT a.retention FROM access_log a WHERE a.retention > t.r ORDER BY a.retention LIMIT 1)
    FROM retentions t WHERE t.r IS NOT NULL
)
SELECT c.*
FROM (SELECT d.*
      FROM retentions t
      CROSS JOIN LATERAL (
          SELECT a.*, x.log_index
          FROM access_log a
          CROSS JOIN LATERAL (SELECT log_index FROM tlog_entries WHERE entry_id = a.id AND logged_at = a.logged_at
                              OFFSET 0) x
          WHERE a.retention = t.r
            AND a.logged_at AT TIME ZONE 'UTC' < ($1::timestamptz - t.r::interval) AT TIME ZONE 'UTC'
          ORDER BY a.logged_at AT TIME ZONE 'UTC', a.id LIMIT $3) d
      WHERE t.r IS NOT NULL
      UNION ALL
      (SELECT a.*, x.log_index
       FROM access_log a
       CROSS JOIN LATERAL (SELECT log_index FROM tlog_entries WHERE entry_id = a.id AND logged_at = a.logged_at
                           OFFSET 0) x
       LEFT JOIN habilitations h ON h.id = a.habilitation_id
       WHERE a.retention IS NULL
         AND a.logged_at AT TIME ZONE 'UTC' < (SELECT max($1::timestamptz - k.r::interval)
                                               FROM (SELECT retention FROM habilitations UNION SELECT $2::text) k(r))
                                              AT TIME ZONE 'UTC'
         AND a.logged_at < $1::timestamptz - COALESCE(h.retention, $2)::interval
       ORDER BY a.logged_at AT TIME ZONE 'UTC', a.id LIMIT $3)) c
ORDER BY c.logged_at, c.id LIMIT $3;

-- name: tlog_prune_tombstones
INSERT INTO tlog_pruned (log_index, entry_id, logged_at, habilitation_id, pruned_at, leaf_data)
SELECT u.log_index, u.entry_id, u.logged_at, u.habilitation_id, $5::timestamptz, u.leaf_data
FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::text[], $6::bytea[])
    AS u(log_index, entry_id, logged_at, habilitation_id, leaf_data);

-- name: tlog_prune_evidence
-- Entries are (id, logged_at) pairs, $1 and $2: id alone is unique only within a month.
DELETE FROM exchange_evidence WHERE (entry_id, logged_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]));

-- name: tlog_prune_outbox
-- Their notifications, delivered or not (no foreign key since access_log is partitioned, migration 0029), by
-- (id, logged_at) (migration 0032): not those of other months' entries that share an id.
DELETE FROM notification_outbox WHERE (entry_id, logged_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]));

-- name: tlog_prune_delete
DELETE FROM access_log WHERE (id, logged_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]));

-- name: outbox_claim
-- Lease due notifications: pushing next_attempt_at past the lease makes another worker skip them, and a worker that
-- dies mid-delivery only delays them by the lease.
-- The lines taken are updated by id from an array, not joined back: with a backlog in the statistics (a webhook down
-- for hours, or configured on a broker that ran without one) the generic plan PostgreSQL keeps after five passes
-- hashed the whole outbox for the 50 lines (a 300,000-entry log, 100,000 lines due: 270,000 rows read, 100 ms, every
-- pass; 1 ms now).
UPDATE notification_outbox o SET next_attempt_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
WHERE o.id = ANY(ARRAY(SELECT id FROM notification_outbox
                       WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
                       ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING o.id, o.entry_id, o.logged_at, o.attempts, o.created_at;

-- name: outbox_payload
-- The entries ($1 ids, $2 logged_at) of claimed notifications: by both, so a row reusing an entry's id in another
-- month is never sent as that entry's notification.
SELECT id, logged_at, subject_key, consumer, dataset, dataset_version, fields_released, purpose, recipient,
       habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url
FROM access_log WHERE (id, logged_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]));

-- name: outbox_delivered
UPDATE notification_outbox SET delivered_at = now(), last_error = NULL WHERE id = $1;

-- name: outbox_failed
UPDATE notification_outbox SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3,
    gave_up_at = CASE WHEN $4 THEN now() END
WHERE id = $1;

-- name: log_batch_insert
-- How entries are written (broker/tlog/accesslog.py `write`; the pipeline's in batches, groupcommit.py): access-log
-- rows with their leaf hashes ($1) (access_log's trigger puts them in the integrator's queue, migration 0031), the
-- outbox rows of the released ones and their evidence ($2), both as JSON
-- arrays of rows by column name (as text: the pool's jsonb codec would encode a str as a JSON string). Sent on its
-- own (no BEGIN, no COMMIT) it is one round trip and one implicit transaction with one synchronous commit, instead
-- of five round trips (BEGIN, three INSERTs, COMMIT). All or nothing, as a transaction.
WITH entries AS (
    SELECT * FROM jsonb_populate_recordset(NULL::access_log, $1::text::jsonb)
), logged AS (
    INSERT INTO access_log (id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
                            habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url,
                            fields_requested, fields_released, outcome, problem_type, http_status, latency_ms,
                            payload_sha256, subject_key, leaf_version, retention, latency_us, payload_salt,
                            payload_commitment, request_signature_sha256, call_context, call_object, parameters,
                            leaf_hash)
    SELECT id, logged_at, request_id, consumer, kid, dataset, dataset_version, purpose, recipient,
           habilitation_id, legal_basis_type, legal_basis_title, legal_basis_url,
           fields_requested, fields_released, outcome, problem_type, http_status, latency_ms,
           payload_sha256, subject_key, leaf_version, retention, latency_us, payload_salt,
           payload_commitment, request_signature_sha256, call_context, call_object, parameters, leaf_hash
    FROM entries
    RETURNING 1
), outbox AS (
    INSERT INTO notification_outbox (entry_id, logged_at) SELECT id, logged_at FROM entries WHERE outcome = 'released'
    RETURNING 1
), evidence AS (
    INSERT INTO exchange_evidence (entry_id, logged_at, request_label, request_signature, request_signature_base,
                                   request_key, response_status, response_signature, response_signature_base,
                                   response_key)
    SELECT entry_id, logged_at, request_label, request_signature, request_signature_base,
           request_key, response_status, response_signature, response_signature_base, response_key
    FROM jsonb_populate_recordset(NULL::exchange_evidence, $2::text::jsonb)
    RETURNING 1
)
SELECT (SELECT count(*) FROM logged) AS entries, (SELECT count(*) FROM outbox) AS outbox,
       (SELECT count(*) FROM evidence) AS evidence;

-- name: evidence_export
-- An entry's evidence with its row and both keys from the key history (retired keys included).
SELECT e.request_label, e.request_signature, e.request_signature_base, e.response_status, e.response_signature,
       e.response_signature_base,
       a.id, a.logged_at, a.request_id, a.consumer, a.kid, a.dataset, a.dataset_version, a.purpose, a.recipient,
       a.habilitation_id, a.legal_basis_type, a.legal_basis_title, a.legal_basis_url, a.fields_requested,
       a.fields_released, a.outcome, a.problem_type, a.http_status, a.latency_ms, a.payload_sha256, a.subject_key,
       a.leaf_version, a.retention, a.latency_us, a.payload_commitment, a.request_signature_sha256, x.log_index,
       rk.jwk AS req_jwk, rk.kid AS req_kid, rk.owner AS req_owner, rk.not_before AS req_not_before,
       rk.not_after AS req_not_after, rk.retired_at AS req_retired_at,
       bk.jwk AS resp_jwk, bk.kid AS resp_kid, bk.owner AS resp_owner, bk.not_before AS resp_not_before,
       bk.not_after AS resp_not_after, bk.retired_at AS resp_retired_at
FROM exchange_evidence e
JOIN access_log a ON a.id = e.entry_id AND a.logged_at = e.logged_at
LEFT JOIN LATERAL (SELECT log_index FROM tlog_entries WHERE entry_id = a.id AND logged_at = a.logged_at
                   OFFSET 0) x ON true
LEFT JOIN key_history rk ON rk.thumbprint = e.request_key
LEFT JOIN key_history bk ON bk.thumbprint = e.response_key
WHERE e.entry_id = $1;

-- name: key_history_remember
INSERT INTO key_history (thumbprint, kid, owner, alg, jwk, not_before, not_after)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (thumbprint) DO UPDATE SET retired_at = NULL;

-- name: tile_hashes
-- One tile: the stored nodes of level $1 with indices [$2, $3).
SELECT hash FROM tlog_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx;

-- name: tile_entries
-- What an entry bundle needs for leaf indices [$1, $2): each v2 row's entry, or its tombstone's public leaf.
SELECT i AS log_index, p.leaf_data AS pruned_leaf_data,
       a.id, a.logged_at, a.request_id, a.consumer, a.kid, a.dataset, a.dataset_version, a.purpose, a.recipient,
       a.habilitation_id, a.legal_basis_type, a.legal_basis_title, a.legal_basis_url, a.fields_requested,
       a.fields_released, a.outcome, a.problem_type, a.http_status, a.latency_ms, a.payload_sha256, a.subject_key,
       a.leaf_version, a.retention, a.latency_us, a.payload_commitment, a.request_signature_sha256
FROM generate_series($1::bigint, $2::bigint - 1) AS i
LEFT JOIN LATERAL (SELECT * FROM tlog_entries WHERE log_index = i OFFSET 0) x ON true
LEFT JOIN LATERAL (SELECT * FROM access_log WHERE id = x.entry_id AND logged_at = x.logged_at OFFSET 0) a ON true
LEFT JOIN LATERAL (SELECT * FROM tlog_pruned WHERE log_index = i OFFSET 0) p ON true
WHERE a.id IS NOT NULL OR p.log_index IS NOT NULL
ORDER BY i;

-- name: tile_last_v1
-- tlog_entries marks its v1 lines, pruned entries' included (partial index tlog_entries_v1).
SELECT max(log_index) FROM tlog_entries WHERE v1;

-- name: tlog_public_leaf
-- What the v2 entry at leaf index $1 has as public leaf: the row its index names (tlog_entries), or its tombstone.
-- By index, never by id: a row reusing the entry's id in another month must not lend its leaf to this index's proof.
SELECT p.leaf_data AS pruned_leaf_data, a.id, a.logged_at, a.request_id, a.consumer, a.kid, a.dataset,
       a.dataset_version, a.purpose, a.recipient, a.habilitation_id, a.legal_basis_type, a.legal_basis_title,
       a.legal_basis_url, a.fields_requested, a.fields_released, a.outcome, a.problem_type, a.http_status,
       a.latency_ms, a.payload_sha256, a.subject_key, a.leaf_version, a.retention, a.latency_us,
       a.payload_commitment, a.request_signature_sha256
FROM tlog_entries x
LEFT JOIN LATERAL (SELECT * FROM access_log WHERE id = x.entry_id AND logged_at = x.logged_at OFFSET 0) a ON true
LEFT JOIN LATERAL (SELECT leaf_data FROM tlog_pruned WHERE log_index = x.log_index OFFSET 0) p ON true
WHERE x.log_index = $1 AND (a.id IS NOT NULL OR p.leaf_data IS NOT NULL);

-- name: tlog_held_below
-- How many leaf indices below $1 hold a row or a tombstone (`log verify --state`, below the size it verified last),
-- counted without joining those indices to the log (a join was about 1.5 s a million entries): every row of
-- access_log, less those whose index is $1 or more (the lines given since, each looked up) and those still
-- queued, plus the tombstones below $1. Every row is queued by access_log's trigger and leaves the queue only with
-- its index, so the rows counted are those of the indices below $1, if their lines are still there: a row whose
-- line was removed is counted all the same, which tlog_indexed_below sees. Only someone who can disable triggers can
-- make the two differ (a row written behind the queue's back, a row moved to another logged_at, a row left beside
-- its tombstone): someone who could as well edit an old row, which an incremental run does not look for either; a
-- full pass finds all of them (`missing`, `late`, `deleted`).
-- The two counts read every row and every tombstone, the one part that grows with the log: a deletion can be
-- anywhere below. Index only, 50 to 135 ms at 300,000 entries, where the pass spends about 140 us on each new entry.
-- A count kept up to date by a trigger would not do: the deletions this count sees are those made with triggers
-- disabled (the guard refuses any other). The rest reads what came since: the lines given since and the queue's,
-- each line's index probed (OFFSET 0, as in tlog_pending: as an anti-join it hashed all of tlog_entries, 300,040
-- lines read with 18,000 queued on a 300,000-entry log).
SELECT (SELECT count(*) FROM access_log)
     - (SELECT count(*) FROM tlog_entries x
        CROSS JOIN LATERAL (SELECT 1 FROM access_log WHERE id = x.entry_id AND logged_at = x.logged_at OFFSET 0) a
        WHERE x.log_index >= $1)
     - (SELECT count(*) FROM tlog_queue q
        CROSS JOIN LATERAL (SELECT 1 FROM access_log WHERE id = q.entry_id AND logged_at = q.logged_at OFFSET 0) a
        WHERE NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = q.entry_id AND x.logged_at = q.logged_at
                          OFFSET 0))
     + (SELECT count(*) FROM tlog_pruned WHERE log_index < $1) AS held;

-- name: tlog_indexed_below
-- How many leaf indices below $1 have their line in tlog_entries (`log verify --state`): all of them, $1, as long as
-- nobody removed one. tlog_entries only grows (pruning keeps an entry's line) and its primary key is the index, so
-- this is the one check a removed line cannot pass; tlog_held_below does not see it, since the row whose line went
-- is still counted among those of the indices below. It counts every line below $1, as tlog_held_below counts every
-- row: a removal can be anywhere below. Medians of 53 to 67 ms at 300,077 lines, custom plan (a parallel seq scan)
-- or generic (index only).
SELECT count(*) FROM tlog_entries WHERE log_index < $1;

-- name: tlog_horizon
-- Which database this is (its cluster's system identifier) and the horizon of this transaction's snapshot: every
-- transaction with a lower id had ended when it was taken, committed (and seen) or not, so no tombstone whose
-- `written_by` (migration 0039) is below it can appear later but by someone writing that column by hand. Read
-- inside `log verify`'s REPEATABLE READ transaction, it is the snapshot of the whole verification.
-- The timeline is part of which database: a restore to an earlier point keeps the system identifier but rewinds the
-- transaction ids, and once they passed the recorded horizon again the run would count against tombstones the
-- restore took away, and miss those written with reused ids (helper-42's review). Restored, or after a failover, the
-- timeline differs: every tombstone below the verified size is checked once more, and the count starts afresh.
-- Both functions are PUBLIC's on a stock server; a managed or hardened one may revoke them. The role then cannot
-- tell which database this is, nor, with one of them, which timeline: the verification runs without a horizon
-- (DatabaseSource.horizon, verify_log's step 5), and tlog_horizon_grants names the role and what to grant it.
SELECT (pg_control_system()).system_identifier::text || '/' || (pg_control_checkpoint()).timeline_id AS database,
       pg_snapshot_xmin(pg_current_snapshot()) AS horizon;

-- name: tlog_auditor_grants
-- The role this session checks privileges as, quoted as GRANT takes it; which of the tables $1 the search path does
-- not find (not migrated, another schema, or no USAGE on it); which it may not read at all (SELECT on the table or
-- on some of its columns passes: a column-level grant may be all the statements need, and one that is not fails
-- at the first read with the auditor's advice); and which apply row-level security to it (the pass would see only
-- the rows a policy lets through, and name the others deleted).
SELECT quote_ident(current_user) AS role,
       (SELECT array_agg(t ORDER BY t) FROM unnest($1::text[]) t WHERE to_regclass(t) IS NULL) AS absent,
       (SELECT array_agg(t ORDER BY t) FROM unnest($1::text[]) t
        WHERE to_regclass(t) IS NOT NULL AND NOT has_any_column_privilege(to_regclass(t), 'SELECT')) AS missing,
       (SELECT array_agg(t ORDER BY t) FROM unnest($1::text[]) t
        WHERE to_regclass(t) IS NOT NULL AND row_security_active(to_regclass(t))) AS filtered;

-- name: tlog_horizon_grants
-- The role this session checks privileges as, quoted as GRANT takes it, and which of tlog_horizon's functions it may
-- not execute (whichever was revoked: the advice names what is missing, helper-45's review).
SELECT quote_ident(current_user) AS role,
       array_remove(ARRAY[
           CASE WHEN NOT has_function_privilege('pg_control_system()', 'EXECUTE') THEN 'pg_control_system()' END,
           CASE WHEN NOT has_function_privilege('pg_control_checkpoint()', 'EXECUTE')
                THEN 'pg_control_checkpoint()' END,
           CASE WHEN NOT has_function_privilege('pg_current_snapshot()', 'EXECUTE') THEN 'pg_current_snapshot()' END,
           CASE WHEN NOT has_function_privilege('pg_snapshot_xmin(pg_snapshot)', 'EXECUTE')
                THEN 'pg_snapshot_xmin(pg_snapshot)' END], NULL) AS missing;

-- name: tlog_tombstone_counts
-- How many tombstones were written below the horizon $1 (the last verification's, or 0), and how many below $2 (this
-- snapshot's, for the next one). Both from the index on written_by, reading the tombstones below $1 once and those
-- between the two horizons: every tombstone, since an insertion or a deletion can be anywhere below. Index only,
-- medians of 37 to 58 ms at 226,112 tombstones (the total it replaces: 40 to 48 ms).
SELECT b.n AS before,
       b.n + (SELECT count(*) FROM tlog_pruned WHERE written_by >= $1 AND written_by < $2)
           - (SELECT count(*) FROM tlog_pruned WHERE written_by >= $2 AND written_by < $1) AS recorded
FROM (SELECT count(*) AS n FROM tlog_pruned WHERE written_by < $1) b;

-- name: tlog_tombstones_after
-- Tombstones written at or above the horizon $1 for indices below $2, with the leaf stored at their index: those
-- written since the last verification (and by the transactions it saw running), found by the index on written_by
-- (migration 0039), each leaf one probe (OFFSET 0, as in tlog_range). Selected by pruned_at, it read every tombstone;
-- and joined, the generic plan (not knowing how few tombstones match) hashed every leaf of tlog_nodes: 226,112
-- tombstones, 822 written since, on a 300,097-entry log: medians of 61 to 65 ms custom, 262 to 288 ms generic; now
-- 4.0 to 4.5 ms, either plan.
-- The upper bound is xid8's largest value: it leaves no tombstone out (one whose written_by was set high by hand
-- must be checked too), but makes the condition a range, which a generic plan estimates at 0.5 % of the rows rather
-- than a third: with a third, it took the index all the same, but expected 25,000 probes of tlog_nodes, and the
-- cost, past jit_above_cost, had the plan JIT-compiled on every execution (22 to 28 ms of the 35 to 80).
SELECT p.log_index, p.entry_id, p.logged_at, p.pruned_at, p.leaf_data, p.habilitation_id,
       h.retention AS habilitation_retention, n.hash AS stored_leaf
FROM tlog_pruned p
LEFT JOIN habilitations h ON h.id = p.habilitation_id
LEFT JOIN LATERAL (SELECT hash FROM tlog_nodes WHERE level = 0 AND idx = p.log_index OFFSET 0) n ON true
WHERE p.written_by >= $1 AND p.written_by <= '18446744073709551615' AND p.log_index < $2
ORDER BY p.log_index;

-- name: partition_create
-- The month's partition of access_log (migration 0029), created if missing with the month's rows moved out of the
-- default partition; its name, or NULL when it existed.
SELECT access_log_create_partition($1::date);

-- name: partition_default_months
-- The months (UTC) of the rows that landed in the default partition, for want of their month's.
SELECT DISTINCT date_trunc('month', logged_at AT TIME ZONE 'UTC')::date AS month FROM access_log_default ORDER BY 1;

-- name: partition_default_rows
SELECT count(*) FROM access_log_default;

-- name: partition_list
-- The monthly partitions with their bounds [lower, upper), oldest first; the default partition has none.
SELECT c.relname AS name, b[1]::timestamptz AS lower, b[2]::timestamptz AS upper,
       greatest(c.reltuples, 0)::bigint AS estimated_rows
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                               'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)') AS b ON true
WHERE i.inhparent = 'access_log'::regclass
ORDER BY b[1]::timestamptz NULLS LAST;

-- name: partition_keeps_something
-- Whether [$1, $2) holds an entry `log prune` must keep as of $3: not yet integrated, or within its retention (the
-- entry's own, else its habilitation's, else $4). Stops at the first such entry.
SELECT EXISTS (
    SELECT 1 FROM access_log a LEFT JOIN habilitations h ON h.id = a.habilitation_id
    WHERE a.logged_at >= $1 AND a.logged_at < $2
      AND (NOT EXISTS (SELECT 1 FROM tlog_entries x WHERE x.entry_id = a.id AND x.logged_at = a.logged_at)
           OR a.logged_at >= $3::timestamptz - COALESCE(a.retention, h.retention, $4)::interval));

-- name: partition_rows
-- The next $5 entries of [$1, $2) after the entry ($3 logged_at, $4 id; NULL for the first), for the tombstones of
-- a partition dropped whole (every one is integrated: partition_keeps_something said so). Walked in the month's
-- own order, each index looked up.
-- The page's start is a condition of its own, usable whatever $3 is: as `$3 IS NULL OR (...) > ($3, $4)`, a generic
-- plan (PostgreSQL's choice after five pages) could only filter with it, and every page read the month from its
-- start again: quadratic in the month's entries (helper-35's audit: 23,800 rows re-read for one late page).
SELECT a.*, x.log_index
FROM access_log a
CROSS JOIN LATERAL (SELECT log_index FROM tlog_entries WHERE entry_id = a.id AND logged_at = a.logged_at
                    OFFSET 0) x
WHERE a.logged_at >= $1 AND a.logged_at < $2 AND a.logged_at >= COALESCE($3::timestamptz, $1)
  AND (a.logged_at, a.id) > (COALESCE($3::timestamptz, '-infinity'),
                             COALESCE($4::uuid, '00000000-0000-0000-0000-000000000000'))
ORDER BY a.logged_at, a.id LIMIT $5;

-- name: partition_drop
-- Checks that every row has its tombstone, removes the rows' evidence and outbox rows, detaches, drops.
SELECT access_log_drop_partition($1::regclass);
