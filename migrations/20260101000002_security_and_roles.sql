-- migrate:up
-- Who may do what. Needs no CREATEROLE when a DBA has created the three roles and
-- granted sessions_admin to the migrating role: then this only grants on our own objects.

-- Roles are cluster-wide: create them only if missing (another database on the
-- cluster, or a DBA, may have made them already). All NOLOGIN: grant them to login roles.
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
  -- The migrating role must be able to hand functions over to sessions_admin
  -- (20260101000003 and 000004), which on PostgreSQL 16 and later takes the SET
  -- option: a CREATEROLE role that just created sessions_admin holds it with ADMIN
  -- OPTION only, a membership that does not count.
  IF NOT pg_has_role(current_user, 'sessions_admin',
       CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'USAGE' END) THEN
    EXECUTE format('GRANT sessions_admin TO %I', current_user);
  END IF;
END
$$;

REVOKE ALL ON SCHEMA sessions FROM PUBLIC;
GRANT USAGE ON SCHEMA sessions TO sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL ON ALL TABLES IN SCHEMA sessions FROM PUBLIC;

-- The middleware: reads and writes sessions of its tenant, never the event log (its
-- changes reach the log through the triggers). Version, timestamps of creation and
-- update are the database's, never the client's.
GRANT SELECT, DELETE ON sessions.session TO sessions_app;
GRANT INSERT (tenant_id, token_hash, user_id, data, last_seen_at, idle_expires_at,
              absolute_expires_at, revoked_at, revoked_reason, ip, user_agent)
  ON sessions.session TO sessions_app;
GRANT UPDATE (data, user_id, token_hash, token_issued_at, last_seen_at, idle_expires_at,
              absolute_expires_at, revoked_at, revoked_reason)
  ON sessions.session TO sessions_app;
-- A rotation records the token it replaced; a reuse after the grace period is marked
-- (its trigger logs it). Deleted only with their session (ON DELETE CASCADE).
GRANT SELECT ON sessions.previous_token TO sessions_app;
GRANT INSERT (tenant_id, token_hash, session_id, grace_expires_at, rotation_ip, rotation_user_agent)
  ON sessions.previous_token TO sessions_app;
GRANT UPDATE (reused_at, reused_ip, reused_user_agent) ON sessions.previous_token TO sessions_app;
-- For the middleware's start-up check that the schema matches the code.
GRANT SELECT ON sessions.schema_migrations TO sessions_app, sessions_auditor;

-- The auditor: everything but the secrets (token_hash) and the contents (data).
GRANT SELECT (tenant_id, id, user_id, version, created_at, updated_at, last_seen_at,
              idle_expires_at, absolute_expires_at, expires_at, revoked_at, revoked_reason,
              ip, user_agent, token_issued_at)
  ON sessions.session TO sessions_auditor;
GRANT SELECT (tenant_id, session_id, rotated_at, grace_expires_at, rotation_ip, rotation_user_agent,
              reused_at, reused_ip, reused_user_agent)
  ON sessions.previous_token TO sessions_auditor;
GRANT SELECT ON sessions.event TO sessions_auditor;

-- Maintenance across tenants (GC, revocation, event retention), mostly through the
-- definer functions it owns. It alone may write events; nobody may update them, and
-- only retention (sessions.prune_events) deletes them.
GRANT SELECT, UPDATE, DELETE ON sessions.session TO sessions_admin;
GRANT SELECT, UPDATE, DELETE ON sessions.previous_token TO sessions_admin;
GRANT SELECT, INSERT, DELETE ON sessions.event TO sessions_admin;

-- Row-level security, forced so that even the owner goes through the policies (a
-- session's deletion still cascades to its previous tokens: referential actions run as
-- the table owner, past the policies).
ALTER TABLE sessions.session ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.session FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.previous_token ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.previous_token FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.event ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.event FORCE ROW LEVEL SECURITY;

-- Fails closed: with no tenant set current_setting gives NULL (or '' after a
-- transaction-local setting ended) and tenant_id is never NULL nor empty.
CREATE POLICY tenant_isolation ON sessions.session
  USING (tenant_id = current_setting('sessions.tenant', true))
  WITH CHECK (tenant_id = current_setting('sessions.tenant', true));
CREATE POLICY auditor_reads_all ON sessions.session FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY admin_all ON sessions.session TO sessions_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_isolation ON sessions.previous_token
  USING (tenant_id = current_setting('sessions.tenant', true))
  WITH CHECK (tenant_id = current_setting('sessions.tenant', true));
CREATE POLICY auditor_reads_all ON sessions.previous_token FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY admin_all ON sessions.previous_token TO sessions_admin USING (true) WITH CHECK (true);
CREATE POLICY auditor_reads_all ON sessions.event FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY admin_all ON sessions.event TO sessions_admin USING (true) WITH CHECK (true);

-- migrate:down
DROP POLICY admin_all ON sessions.event;
DROP POLICY auditor_reads_all ON sessions.event;
DROP POLICY admin_all ON sessions.session;
DROP POLICY auditor_reads_all ON sessions.session;
DROP POLICY tenant_isolation ON sessions.session;
DROP POLICY admin_all ON sessions.previous_token;
DROP POLICY auditor_reads_all ON sessions.previous_token;
DROP POLICY tenant_isolation ON sessions.previous_token;
ALTER TABLE sessions.previous_token NO FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.previous_token DISABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.event NO FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.event DISABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.session NO FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions.session DISABLE ROW LEVEL SECURITY;

REVOKE ALL ON ALL TABLES IN SCHEMA sessions FROM sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL (tenant_id, id, token_hash, user_id, data, version, created_at, updated_at, last_seen_at,
            idle_expires_at, absolute_expires_at, expires_at, revoked_at, revoked_reason, ip, user_agent,
            token_issued_at)
  ON sessions.session FROM sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL (tenant_id, token_hash, session_id, rotated_at, grace_expires_at, rotation_ip,
            rotation_user_agent, reused_at, reused_ip, reused_user_agent)
  ON sessions.previous_token FROM sessions_app, sessions_auditor, sessions_admin;
REVOKE ALL ON SCHEMA sessions FROM sessions_app, sessions_auditor, sessions_admin;

-- Dropped only when no other database of the cluster still uses them, and only by a
-- role allowed to (roles a DBA created stay the DBA's).
DO $$
DECLARE
  role_name text;
BEGIN
  FOREACH role_name IN ARRAY ARRAY['sessions_app', 'sessions_auditor', 'sessions_admin'] LOOP
    BEGIN
      EXECUTE format('DROP ROLE IF EXISTS %I', role_name);
    EXCEPTION
      WHEN dependent_objects_still_exist OR object_in_use THEN
        RAISE NOTICE 'role % is still used elsewhere in the cluster and is kept', role_name;
      WHEN insufficient_privilege THEN
        RAISE NOTICE 'role % is kept: % may not drop it', role_name, current_user;
    END;
  END LOOP;
END
$$;
