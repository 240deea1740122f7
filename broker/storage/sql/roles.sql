-- The database roles of a production broker (docs/operations.md, « Database roles »).
--
-- owner:  owns every table, sequence and function of the schema; runs migrations (DLNUF_ADMIN_DATABASE_URL) and
--         `log prune`. Not a superuser.
-- broker: the role `serve` connects with (DATABASE_URL). It reads and writes what serving needs, but on the
--         transparency log's tables it may only append: no UPDATE or DELETE (the integrator's queue aside: it may
--         delete a line of tlog_queue once its entry has its index, and add none), no TRUNCATE, and, not being the
--         owner, no ALTER TABLE ... DISABLE TRIGGER. So a compromised broker process cannot rewrite history.
--
-- Role names are identifiers, which a $n parameter cannot carry: they travel as the settings dlnuf.owner_role and
-- dlnuf.broker_role (set_config with $n parameters, roles.py) and reach SQL only through format('%I').

-- name: create_roles
-- As a superuser (or a role with CREATEROLE that can also transfer ownership): the two roles, recorded.
DO $$
DECLARE
    owner_role  text := current_setting('dlnuf.owner_role');
    broker_role text := current_setting('dlnuf.broker_role');
BEGIN
    IF owner_role = broker_role THEN
        RAISE EXCEPTION 'the owner and the broker roles must differ' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = owner_role) THEN
        EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', owner_role);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = broker_role) THEN
        EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', broker_role);
    END IF;
    -- An existing role is used as it is, unless it would defeat the point.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = broker_role AND (rolsuper OR rolbypassrls OR rolcreaterole)) THEN
        RAISE EXCEPTION 'role % is a superuser or may bypass row security or create roles: it cannot be the broker''s',
            broker_role USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_has_role(broker_role, owner_role, 'MEMBER') THEN
        RAISE EXCEPTION 'role % is a member of the owner role %: it would own the log', broker_role, owner_role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I, %I', current_database(), owner_role, broker_role);
    -- PostgreSQL 15 no longer lets PUBLIC create in the public schema; older versions did.
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA public TO %I', owner_role);
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', broker_role);
    DELETE FROM database_roles WHERE purpose = 'owner' AND role_name <> owner_role;
    DELETE FROM database_roles WHERE purpose = 'broker' AND role_name <> broker_role;
    INSERT INTO database_roles (role_name, purpose) VALUES (owner_role, 'owner'), (broker_role, 'broker')
        ON CONFLICT (role_name) DO UPDATE SET purpose = EXCLUDED.purpose, granted_at = now();
END;
$$;

-- name: apply_roles
-- After `create_roles`, and after every migration that applied something: the owner takes whatever another role
-- (the superuser, migrating) created, when the current role may give it; then the broker role's privileges are set
-- afresh on every table. The owner can run this much on its own tables.
DO $$
DECLARE
    owner_role  text := (SELECT role_name FROM database_roles WHERE purpose = 'owner');
    broker_role text := (SELECT role_name FROM database_roles WHERE purpose = 'broker');
    obj record;
BEGIN
    IF owner_role IS NULL OR broker_role IS NULL THEN
        RETURN;  -- no roles made here: a database served by a single role (the demo's before it, tests)
    END IF;
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        -- Tables (with their identity sequences), standalone sequences, views, functions.
        FOR obj IN SELECT c.oid::regclass AS name FROM pg_class c
                   WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                     AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = owner_role) LOOP
            EXECUTE format('ALTER TABLE %s OWNER TO %I', obj.name, owner_role);
        END LOOP;
        FOR obj IN SELECT c.oid::regclass AS name FROM pg_class c
                   WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
                     AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = owner_role)
                     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                     AND d.objid = c.oid AND d.deptype IN ('a', 'i')) LOOP
            EXECUTE format('ALTER SEQUENCE %s OWNER TO %I', obj.name, owner_role);
        END LOOP;
        FOR obj IN SELECT p.oid::regprocedure AS name FROM pg_proc p
                   WHERE p.pronamespace = 'public'::regnamespace
                     AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = owner_role) LOOP
            EXECUTE format('ALTER FUNCTION %s OWNER TO %I', obj.name, owner_role);
        END LOOP;
    END IF;
    -- Everything serving needs: read and write the working tables...
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', broker_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I', broker_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', broker_role);
    -- ...but the log's tables only grow (tests/storage/test_roles.py checks that every table with an append-only
    -- guard trigger is in this list), the tombstones are `log prune`'s (the owner's) alone, and the roles and the
    -- migrations are the owner's business.
    -- The integrator's queue: access_log's trigger (as its owner) adds the lines; the broker reads them and takes an
    -- entry off once tlog_entries holds its index (tlog_queue's trigger checks).
    EXECUTE format('REVOKE INSERT, UPDATE, TRUNCATE ON tlog_queue FROM %I', broker_role);
    EXECUTE format('REVOKE UPDATE, DELETE ON access_log, exchange_evidence, tlog_nodes, tlog_checkpoints,'
                   ' tlog_cosignatures, tlog_entries FROM %I', broker_role);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON tlog_pruned, schema_migrations, database_roles FROM %I',
                   broker_role);
    -- The access log's monthly partitions (migration 0029) are reached through access_log: the broker role may
    -- read one, never write, truncate, detach or drop it (the owner's, as `log prune`).
    FOR obj IN SELECT inhrelid::regclass AS name FROM pg_inherits WHERE inhparent = to_regclass('access_log') LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %I', obj.name, broker_role);
        EXECUTE format('GRANT SELECT ON %s TO %I', obj.name, broker_role);
    END LOOP;
    -- A node records the keys' fingerprints at first start; changing them (`keys rotate`) is the owner's.
    IF to_regclass('node_keys') IS NOT NULL THEN
        EXECUTE format('REVOKE UPDATE, DELETE ON node_keys FROM %I', broker_role);
    END IF;
END;
$$;

-- name: role_privileges
-- What the connected role could do to the log, for `serve`'s refusal to run with more than it needs; the log's
-- columns are NULL before the migration that creates it.
SELECT r.rolname AS role_name,
       r.rolsuper AS superuser,
       pg_has_role(r.rolname, c.relowner, 'MEMBER') AS owner,
       pg_get_userbyid(c.relowner) AS owner_name,
       has_table_privilege(r.rolname, c.oid, 'DELETE') OR has_table_privilege(r.rolname, c.oid, 'TRUNCATE')
           AS can_delete
FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('access_log')
WHERE r.rolname = current_user;
