-- Every tombstone records the transaction that wrote it, so that `log verify --state` can tell the tombstones its
-- last run counted from those it must check now (broker/tlog/verify.py, step 5). It told them apart by `pruned_at`,
-- which is `log prune`'s clock, not the database's: a tombstone dated before the last run was never checked, so an
-- early deletion hid behind a backdated one, and a lawful prune whose clock was behind, or whose transaction
-- committed after the last run's snapshot was taken, went unchecked too. A transaction id is the database's own and
-- says exactly what a snapshot may still miss: every transaction below the snapshot's xmin had ended.
-- xid8 is the 64-bit id (with its epoch): it never wraps around, and freezing leaves a column alone.
-- The tombstones written before this migration get 0: below every horizon a verification will record. The constant
-- default is a change of the catalog only (no rewrite of the table); the default for new tombstones comes after it.
-- Adding the column needs tlog_pruned to itself for a moment (1 to 3 ms), and building the index blocks `log prune`
-- while it runs (134 to 177 ms for 225,290 tombstones). Behind a long transaction (a full `log verify` reads
-- tlog_pruned for minutes) either would wait, and every reader of the tombstones (proofs, entry bundles) with it:
-- give up after 5 s instead; `migrate` can be run again.
SET LOCAL lock_timeout = '5s';
ALTER TABLE tlog_pruned ADD COLUMN written_by xid8 NOT NULL DEFAULT '0';
ALTER TABLE tlog_pruned ALTER COLUMN written_by SET DEFAULT pg_current_xact_id();
CREATE INDEX tlog_pruned_written_by ON tlog_pruned (written_by);
