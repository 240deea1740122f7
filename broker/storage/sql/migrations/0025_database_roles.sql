-- The database roles `python -m broker db grant` created (broker/storage/sql/roles.sql): the owner, which owns every
-- table and runs migrations, and the broker's least-privilege role, which serves. Kept here so that a migration run
-- later by the owner gives the broker role its privileges on the new tables (db.migrate re-applies roles.sql's
-- `apply_roles` after applying anything).
CREATE TABLE database_roles (
    role_name  text PRIMARY KEY,
    purpose    text NOT NULL CHECK (purpose IN ('owner', 'broker')),
    granted_at timestamptz NOT NULL DEFAULT now()
);
