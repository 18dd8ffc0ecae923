-- migrate:up
-- Roles are cluster-wide: create them only if missing (another database on the
-- cluster may have made them already). All NOLOGIN: grant them to login roles.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sessions_app') THEN
    CREATE ROLE sessions_app NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sessions_auditor') THEN
    CREATE ROLE sessions_auditor NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sessions_admin') THEN
    CREATE ROLE sessions_admin NOLOGIN;
  END IF;
  -- The migrating role must be able to hand functions over to sessions_admin.
  IF NOT pg_has_role(current_user, 'sessions_admin', 'MEMBER') THEN
    EXECUTE format('GRANT sessions_admin TO %I', current_user);
  END IF;
END
$$;

REVOKE ALL ON SCHEMA sessions FROM PUBLIC;
GRANT USAGE ON SCHEMA sessions TO sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL ON ALL TABLES IN SCHEMA sessions FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA sessions FROM PUBLIC;

-- The middleware: reads and writes sessions of its tenant, never the event log.
GRANT SELECT, DELETE ON sessions.session TO sessions_app;
GRANT INSERT (tenant_id, token_hash, user_id, data, last_seen_at, idle_expires_at,
              absolute_expires_at, revoked_at, revoked_reason, ip, user_agent)
  ON sessions.session TO sessions_app;
GRANT UPDATE (data, user_id, token_hash, last_seen_at, idle_expires_at, absolute_expires_at,
              revoked_at, revoked_reason)
  ON sessions.session TO sessions_app;
GRANT SELECT ON sessions.schema_migrations TO sessions_app, sessions_auditor;
GRANT EXECUTE ON FUNCTION sessions.gc_batch(integer) TO sessions_app, sessions_admin;

-- The auditor: everything but the secrets (token_hash) and the contents (data).
GRANT SELECT (tenant_id, id, user_id, version, created_at, updated_at, last_seen_at,
              idle_expires_at, absolute_expires_at, expires_at, revoked_at, revoked_reason,
              ip, user_agent)
  ON sessions.session TO sessions_auditor;
GRANT SELECT ON sessions.event TO sessions_auditor;

-- Maintenance: GC, cross-tenant revocation, event retention (through definer functions).
GRANT SELECT, UPDATE, DELETE ON sessions.session TO sessions_admin;
GRANT SELECT, INSERT ON sessions.event TO sessions_admin;

-- The trigger-side functions run as sessions_admin, which alone may write events.
-- (A non-superuser may only give a function to a role that can create in its schema:
-- grant that for the hand-over and take it back.)
GRANT CREATE ON SCHEMA sessions TO sessions_admin;
ALTER FUNCTION sessions.log_insert() OWNER TO sessions_admin;
ALTER FUNCTION sessions.log_update() OWNER TO sessions_admin;
ALTER FUNCTION sessions.log_delete() OWNER TO sessions_admin;
ALTER FUNCTION sessions.gc_batch(integer) OWNER TO sessions_admin;
REVOKE CREATE ON SCHEMA sessions FROM sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.content_changed(sessions.session, sessions.session) TO sessions_app;
GRANT EXECUTE ON FUNCTION sessions.content_changed(sessions.session, sessions.session),
                          sessions.changed_keys(jsonb, jsonb),
                          sessions.notify_changes(text, jsonb),
                          sessions.current_actor()
  TO sessions_admin;

-- Row-level security, forced so that even the owner goes through the policies.
ALTER TABLE sessions.session ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.session FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.event ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.event FORCE ROW LEVEL SECURITY;

-- Fails closed: with no tenant set current_setting gives NULL (or '' after a
-- transaction-local setting ended) and tenant_id is never NULL nor empty.
CREATE POLICY tenant_isolation ON sessions.session
  USING (tenant_id = current_setting('sessions.tenant', true))
  WITH CHECK (tenant_id = current_setting('sessions.tenant', true));
CREATE POLICY auditor_reads_all ON sessions.session FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY admin_all ON sessions.session TO sessions_admin USING (true) WITH CHECK (true);
CREATE POLICY auditor_reads_all ON sessions.event FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY admin_all ON sessions.event TO sessions_admin USING (true) WITH CHECK (true);

-- migrate:down
DROP POLICY admin_all ON sessions.event;
DROP POLICY auditor_reads_all ON sessions.event;
DROP POLICY admin_all ON sessions.session;
DROP POLICY auditor_reads_all ON sessions.session;
DROP POLICY tenant_isolation ON sessions.session;
ALTER TABLE sessions.event NO FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.event DISABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.session NO FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.session DISABLE ROW LEVEL SECURITY;

ALTER FUNCTION sessions.log_insert() OWNER TO CURRENT_USER;
ALTER FUNCTION sessions.log_update() OWNER TO CURRENT_USER;
ALTER FUNCTION sessions.log_delete() OWNER TO CURRENT_USER;
ALTER FUNCTION sessions.gc_batch(integer) OWNER TO CURRENT_USER;

REVOKE ALL ON ALL TABLES IN SCHEMA sessions FROM sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL (tenant_id, id, token_hash, user_id, data, version, created_at, updated_at, last_seen_at,
            idle_expires_at, absolute_expires_at, expires_at, revoked_at, revoked_reason, ip, user_agent)
  ON sessions.session FROM sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA sessions FROM sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL ON SCHEMA sessions FROM sessions_app, sessions_auditor, sessions_admin;
GRANT USAGE ON SCHEMA sessions TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA sessions TO PUBLIC;

-- Dropped only when no other database of the cluster still uses them.
DO $$
DECLARE
  role_name text;
BEGIN
  FOREACH role_name IN ARRAY ARRAY['sessions_app', 'sessions_auditor', 'sessions_admin'] LOOP
    BEGIN
      EXECUTE format('DROP ROLE IF EXISTS %I', role_name);
    EXCEPTION WHEN dependent_objects_still_exist OR object_in_use THEN
      RAISE NOTICE 'role % is still used elsewhere in the cluster and is kept', role_name;
    END;
  END LOOP;
END
$$;
