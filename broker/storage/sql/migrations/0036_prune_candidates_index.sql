-- `log prune` looked for the entries past their retention (broker/tlog/sql/tlog.sql `tlog_prune_candidates`) by
-- reading the whole access log: each row's cutoff depends on its retention, so no index on logged_at bounds it
-- (an audit: 306 to 377 ms at 330,000 entries, linear in the log). With this index the statement reads one range
-- per retention the log holds, (retention = r, logged_at < now - r), and the v1 entries' (retention NULL) below
-- the latest cutoff any of them can have.
-- logged_at is indexed AT TIME ZONE 'UTC' (an immutable expression, in the same order) and the statement's ranges
-- are written with it, so that no other index can serve them: on logged_at itself, the planner took the index on
-- logged_at alone for some partitions (correlated with the table, cheaper by its estimates when the retentions are
-- interleaved) and read every older entry of every retention.
-- On the partitioned table it is a partitioned index: every partition gets its own, and so does every month
-- `access_log_create_partition` attaches later. It cannot be built CONCURRENTLY (not on a partitioned table, nor in
-- a migration's transaction), so inserts into access_log, every exchange's, wait until the migration commits
-- (docs/operations.md « Migrations »: for a large log, build each partition's index concurrently beforehand, and
-- this statement only attaches them). Behind a long transaction it would wait, and every exchange with it: give up
-- after 5 s instead; `migrate` can be run again.
SET LOCAL lock_timeout = '5s';
CREATE INDEX access_log_retention ON access_log (retention, (logged_at AT TIME ZONE 'UTC'));
