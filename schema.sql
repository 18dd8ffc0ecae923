-- Schema "sessions" as migrations/ leave it, every object with its definition.
-- Generated from the catalogs by `npm run schema:dump` (PostgreSQL 15 and 18 give this
-- same text) and checked by tests/schema.test.ts. To install, run `pg-sessions migrate up`.
-- Objects without an OWNER TO line belong to the role that ran the migrations.

-- Roles are cluster-wide: the migrations create them only when missing, and grant
-- sessions_admin to the migrating role unless it is a member already.
CREATE ROLE sessions_admin NOLOGIN;
CREATE ROLE sessions_app NOLOGIN;
CREATE ROLE sessions_auditor NOLOGIN;

CREATE SCHEMA sessions;
GRANT USAGE ON SCHEMA sessions TO sessions_admin;
GRANT USAGE ON SCHEMA sessions TO sessions_app;
GRANT USAGE ON SCHEMA sessions TO sessions_auditor;

CREATE TABLE sessions.event (
    tenant_id text NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY NOT NULL,
    occurred_at timestamp with time zone DEFAULT now() NOT NULL,
    session_id uuid NOT NULL,
    user_id text,
    kind text NOT NULL,
    version bigint,
    changed_keys text[],
    reason text,
    actor text NOT NULL,
    ip inet,
    user_agent text,
    rotation_ip inet,
    rotation_user_agent text,
    CONSTRAINT event_pkey PRIMARY KEY (tenant_id, id),
    CONSTRAINT event_kind_check CHECK ((kind = ANY (ARRAY['created'::text, 'updated'::text, 'rotated'::text, 'user_bound'::text, 'revoked'::text, 'expired'::text, 'destroyed'::text, 'purged'::text, 'altered'::text, 'token_reused'::text, 'reauthenticated'::text, 'erased'::text])))
);
CREATE INDEX event_day_brin ON sessions.event USING brin ((((occurred_at AT TIME ZONE 'UTC'::text))::date));
CREATE INDEX event_occurred_at_brin ON sessions.event USING brin (occurred_at);
CREATE INDEX event_revoked_idx ON sessions.event USING btree (tenant_id, user_id, occurred_at) WHERE (kind = 'revoked'::text);
CREATE INDEX event_session_idx ON sessions.event USING btree (tenant_id, session_id);
CREATE INDEX event_tenant_occurred_at_idx ON sessions.event USING btree (tenant_id, occurred_at);
CREATE INDEX event_user_idx ON sessions.event USING btree (tenant_id, user_id, occurred_at) WHERE (user_id IS NOT NULL);
ALTER TABLE sessions.event ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.event FORCE ROW LEVEL SECURITY;
CREATE POLICY admin_all ON sessions.event TO sessions_admin USING (true) WITH CHECK (true);
CREATE POLICY auditor_reads_all ON sessions.event FOR SELECT TO sessions_auditor USING (true);
GRANT SELECT, INSERT, DELETE ON TABLE sessions.event TO sessions_admin;
GRANT SELECT ON TABLE sessions.event TO sessions_auditor;
GRANT UPDATE (user_id, actor, ip, user_agent, rotation_ip, rotation_user_agent) ON TABLE sessions.event TO sessions_admin;

CREATE TABLE sessions.previous_token (
    tenant_id text NOT NULL,
    token_hash bytea NOT NULL,
    session_id uuid NOT NULL,
    rotated_at timestamp with time zone DEFAULT now() NOT NULL,
    grace_expires_at timestamp with time zone NOT NULL,
    rotation_ip inet,
    rotation_user_agent text,
    reused_at timestamp with time zone,
    reused_ip inet,
    reused_user_agent text,
    CONSTRAINT previous_token_pkey PRIMARY KEY (tenant_id, token_hash),
    CONSTRAINT previous_token_session_fkey FOREIGN KEY (tenant_id, session_id) REFERENCES sessions.session(tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT previous_token_reused_user_agent_check CHECK ((length(reused_user_agent) <= 1024)),
    CONSTRAINT previous_token_rotation_user_agent_check CHECK ((length(rotation_user_agent) <= 1024)),
    CONSTRAINT previous_token_token_hash_check CHECK ((octet_length(token_hash) = 32))
);
CREATE INDEX previous_token_session_idx ON sessions.previous_token USING btree (tenant_id, session_id);
ALTER TABLE sessions.previous_token ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.previous_token FORCE ROW LEVEL SECURITY;
CREATE POLICY admin_all ON sessions.previous_token TO sessions_admin USING (true) WITH CHECK (true);
CREATE POLICY auditor_reads_all ON sessions.previous_token FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY tenant_isolation ON sessions.previous_token USING ((tenant_id = current_setting('sessions.tenant'::text, true))) WITH CHECK ((tenant_id = current_setting('sessions.tenant'::text, true)));
GRANT SELECT, UPDATE, DELETE ON TABLE sessions.previous_token TO sessions_admin;
GRANT SELECT ON TABLE sessions.previous_token TO sessions_app;
GRANT INSERT (tenant_id, token_hash, session_id, grace_expires_at, rotation_ip, rotation_user_agent) ON TABLE sessions.previous_token TO sessions_app;
GRANT UPDATE (reused_at, reused_ip, reused_user_agent) ON TABLE sessions.previous_token TO sessions_app;
GRANT SELECT (tenant_id, session_id, rotated_at, grace_expires_at, rotation_ip, rotation_user_agent, reused_at, reused_ip, reused_user_agent) ON TABLE sessions.previous_token TO sessions_auditor;

CREATE TABLE sessions.schema_migrations (
    version character varying(128) NOT NULL,
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);
GRANT SELECT ON TABLE sessions.schema_migrations TO sessions_app;
GRANT SELECT ON TABLE sessions.schema_migrations TO sessions_auditor;

CREATE TABLE sessions.session (
    tenant_id text NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    token_hash bytea NOT NULL,
    user_id text,
    data jsonb DEFAULT '{}'::jsonb NOT NULL,
    version bigint DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen_at timestamp with time zone DEFAULT now() NOT NULL,
    idle_expires_at timestamp with time zone NOT NULL,
    absolute_expires_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone GENERATED ALWAYS AS (LEAST(idle_expires_at, absolute_expires_at)) STORED,
    revoked_at timestamp with time zone,
    revoked_reason text,
    ip inet,
    user_agent text,
    token_issued_at timestamp with time zone DEFAULT now() NOT NULL,
    authenticated_at timestamp with time zone,
    device_name text,
    CONSTRAINT session_pkey PRIMARY KEY (tenant_id, id),
    CONSTRAINT session_token_hash_key UNIQUE (tenant_id, token_hash),
    CONSTRAINT session_data_check CHECK ((jsonb_typeof(data) = 'object'::text)),
    CONSTRAINT session_device_name_length CHECK (((device_name IS NULL) OR ((char_length(device_name) >= 1) AND (char_length(device_name) <= 100)))),
    CONSTRAINT session_revocation_consistent CHECK (((revoked_at IS NULL) = (revoked_reason IS NULL))),
    CONSTRAINT session_tenant_id_check CHECK (((tenant_id <> ''::text) AND (length(tenant_id) <= 200))),
    CONSTRAINT session_token_hash_check CHECK ((octet_length(token_hash) = 32)),
    CONSTRAINT session_user_agent_check CHECK ((length(user_agent) <= 1024))
) WITH (autovacuum_analyze_scale_factor=0.02, autovacuum_vacuum_scale_factor=0.05);
CREATE INDEX session_expires_at_idx ON sessions.session USING btree (expires_at);
CREATE INDEX session_revoked_at_idx ON sessions.session USING btree (revoked_at) WHERE (revoked_at IS NOT NULL);
CREATE INDEX session_user_idx ON sessions.session USING btree (tenant_id, user_id) WHERE (user_id IS NOT NULL);
ALTER TABLE sessions.session ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions.session FORCE ROW LEVEL SECURITY;
CREATE POLICY admin_all ON sessions.session TO sessions_admin USING (true) WITH CHECK (true);
CREATE POLICY auditor_reads_all ON sessions.session FOR SELECT TO sessions_auditor USING (true);
CREATE POLICY tenant_isolation ON sessions.session USING ((tenant_id = current_setting('sessions.tenant'::text, true))) WITH CHECK ((tenant_id = current_setting('sessions.tenant'::text, true)));
GRANT SELECT, UPDATE, DELETE ON TABLE sessions.session TO sessions_admin;
GRANT SELECT, DELETE ON TABLE sessions.session TO sessions_app;
GRANT INSERT (tenant_id, id, token_hash, user_id, data, last_seen_at, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason, ip, user_agent, authenticated_at) ON TABLE sessions.session TO sessions_app;
GRANT UPDATE (token_hash, user_id, data, last_seen_at, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason, token_issued_at, authenticated_at, device_name) ON TABLE sessions.session TO sessions_app;
GRANT SELECT (tenant_id, id, user_id, version, created_at, updated_at, last_seen_at, idle_expires_at, absolute_expires_at, expires_at, revoked_at, revoked_reason, ip, user_agent, token_issued_at) ON TABLE sessions.session TO sessions_auditor;

CREATE OR REPLACE FUNCTION sessions.altered_columns(old_row sessions.session, new_row sessions.session)
 RETURNS text[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  SELECT array_remove(ARRAY[
    CASE WHEN old_row.absolute_expires_at IS DISTINCT FROM new_row.absolute_expires_at
         THEN 'absolute_expires_at' END,
    CASE WHEN old_row.ip IS DISTINCT FROM new_row.ip THEN 'ip' END,
    CASE WHEN old_row.revoked_at IS NOT NULL
              AND old_row.revoked_at IS DISTINCT FROM new_row.revoked_at THEN 'revoked_at' END,
    CASE WHEN old_row.revoked_reason IS DISTINCT FROM new_row.revoked_reason
              AND NOT (old_row.revoked_at IS NULL AND new_row.revoked_at IS NOT NULL)
         THEN 'revoked_reason' END,
    CASE WHEN old_row.user_agent IS DISTINCT FROM new_row.user_agent THEN 'user_agent' END
  ], NULL)
$function$;
REVOKE EXECUTE ON FUNCTION sessions.altered_columns(sessions.session,sessions.session) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.altered_columns(sessions.session,sessions.session) TO sessions_admin;

CREATE OR REPLACE FUNCTION sessions.authenticated_within(session_id uuid, max_age interval)
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  SELECT coalesce(s.authenticated_at > now() - max_age, false)
    FROM sessions.session AS s
   WHERE s.tenant_id = current_setting('sessions.tenant', true) AND s.id = session_id
     AND s.revoked_at IS NULL AND least(s.idle_expires_at, s.absolute_expires_at) > now()
$function$;
REVOKE EXECUTE ON FUNCTION sessions.authenticated_within(uuid,interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.authenticated_within(uuid,interval) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.authenticated_within(uuid,interval) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.bump_version()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.id IS DISTINCT FROM OLD.id
     OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
    RAISE EXCEPTION 'sessions.session: tenant_id, id and created_at cannot change'
      USING ERRCODE = 'check_violation';
  END IF;
  IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NULL THEN
    RAISE EXCEPTION 'sessions.session: a revoked session cannot be un-revoked'
      USING ERRCODE = 'check_violation';
  END IF;
  -- sessions.content_changed(OLD, NEW), written out: a function with its own
  -- search_path is never inlined, and this runs for every updated row.
  IF (OLD.data, OLD.user_id, OLD.token_hash, OLD.revoked_at, OLD.revoked_reason,
      OLD.absolute_expires_at, OLD.ip, OLD.user_agent)
     IS DISTINCT FROM
     (NEW.data, NEW.user_id, NEW.token_hash, NEW.revoked_at, NEW.revoked_reason,
      NEW.absolute_expires_at, NEW.ip, NEW.user_agent) THEN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
  ELSE
    NEW.version := OLD.version;
    NEW.updated_at := OLD.updated_at;
  END IF;
  RETURN NEW;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.bump_version() FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.changed_keys(old_data jsonb, new_data jsonb)
 RETURNS text[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  SELECT coalesce(array_agg(k ORDER BY k), '{}')
    FROM (SELECT jsonb_object_keys(old_data) UNION SELECT jsonb_object_keys(new_data)) AS keys(k)
   WHERE old_data -> k IS DISTINCT FROM new_data -> k
$function$;
REVOKE EXECUTE ON FUNCTION sessions.changed_keys(jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.changed_keys(jsonb,jsonb) TO sessions_admin;

CREATE OR REPLACE FUNCTION sessions.check_revocation_reason(reason text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  IF reason IS NULL OR btrim(reason) = '' OR length(reason) > 200 THEN
    RAISE EXCEPTION 'sessions: a revocation needs a reason of 1 to 200 characters'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.check_revocation_reason(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.check_revocation_reason(text) TO sessions_admin;

CREATE OR REPLACE FUNCTION sessions.content_changed(old_row sessions.session, new_row sessions.session)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  SELECT (old_row.data, old_row.user_id, old_row.token_hash, old_row.revoked_at, old_row.revoked_reason,
          old_row.absolute_expires_at, old_row.ip, old_row.user_agent)
         IS DISTINCT FROM
         (new_row.data, new_row.user_id, new_row.token_hash, new_row.revoked_at, new_row.revoked_reason,
          new_row.absolute_expires_at, new_row.ip, new_row.user_agent)
$function$;
REVOKE EXECUTE ON FUNCTION sessions.content_changed(sessions.session,sessions.session) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.content_changed(sessions.session,sessions.session) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.content_changed(sessions.session,sessions.session) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.create_session(tenant text, actor text, new_token_hash bytea, new_data jsonb, new_user_id text, client_ip inet, client_user_agent text, idle_timeout interval, absolute_timeout interval, relaxed boolean)
 RETURNS TABLE(id uuid, version bigint, created_ms double precision, last_seen_ms double precision, idle_expires_ms double precision, absolute_expires_ms double precision, token_issued_ms double precision)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
BEGIN
  PERFORM set_config('sessions.tenant', tenant, true), set_config('sessions.actor', actor, true);
  IF relaxed AND new_user_id IS NULL THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  -- Announced after the commit (log_insert, notify_deferred), like a data write.
  PERFORM set_config('sessions.defer_notify', 'on', true);
  RETURN QUERY
    INSERT INTO sessions.session AS s (tenant_id, token_hash, user_id, data, idle_expires_at,
                                       absolute_expires_at, ip, user_agent, authenticated_at)
    VALUES (tenant, new_token_hash, new_user_id, new_data,
            now() + least(idle_timeout, absolute_timeout), now() + absolute_timeout,
            client_ip, client_user_agent,
            CASE WHEN new_user_id IS NOT NULL THEN now() END)
    RETURNING s.id, s.version, (extract(epoch FROM s.created_at) * 1000)::float8,
              (extract(epoch FROM s.last_seen_at) * 1000)::float8, (extract(epoch FROM s.idle_expires_at) * 1000)::float8,
              (extract(epoch FROM s.absolute_expires_at) * 1000)::float8,
              (extract(epoch FROM s.token_issued_at) * 1000)::float8;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.create_session(text,text,bytea,jsonb,text,inet,text,interval,interval,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.create_session(text,text,bytea,jsonb,text,inet,text,interval,interval,boolean) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.create_session(text,text,bytea,jsonb,text,inet,text,interval,interval,boolean) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.create_session(tenant text, actor text, new_token_hash bytea, new_data jsonb, new_user_id text, client_ip inet, client_user_agent text, idle_timeout interval, absolute_timeout interval, relaxed boolean, new_id uuid)
 RETURNS TABLE(id uuid, version bigint, created_ms double precision, last_seen_ms double precision, idle_expires_ms double precision, absolute_expires_ms double precision, token_issued_ms double precision)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
  created sessions.session;
BEGIN
  PERFORM set_config('sessions.tenant', tenant, true), set_config('sessions.actor', actor, true);
  IF relaxed AND new_user_id IS NULL THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  -- Announced after the commit (log_insert, notify_deferred), like a data write.
  PERFORM set_config('sessions.defer_notify', 'on', true);
  -- The id as the argument itself in VALUES: Citus runs the call on the session's worker
  -- only for statements that name the argument it is distributed by.
  new_id := coalesce(new_id, gen_random_uuid());
  INSERT INTO sessions.session AS s (tenant_id, id, token_hash, user_id, data, idle_expires_at,
                                     absolute_expires_at, ip, user_agent, authenticated_at)
  VALUES (tenant, new_id, new_token_hash, new_user_id, new_data,
          now() + least(idle_timeout, absolute_timeout), now() + absolute_timeout,
          client_ip, client_user_agent,
          CASE WHEN new_user_id IS NOT NULL THEN now() END)
  RETURNING s.* INTO created;
  RETURN QUERY
    SELECT created.id, created.version, (extract(epoch FROM created.created_at) * 1000)::float8,
           (extract(epoch FROM created.last_seen_at) * 1000)::float8,
           (extract(epoch FROM created.idle_expires_at) * 1000)::float8,
           (extract(epoch FROM created.absolute_expires_at) * 1000)::float8,
           (extract(epoch FROM created.token_issued_at) * 1000)::float8;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.create_session(text,text,bytea,jsonb,text,inet,text,interval,interval,boolean,uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.create_session(text,text,bytea,jsonb,text,inet,text,interval,interval,boolean,uuid) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.create_session(text,text,bytea,jsonb,text,inet,text,interval,interval,boolean,uuid) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.current_actor()
 RETURNS text
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$ SELECT coalesce(nullif(current_setting('sessions.actor', true), ''), session_user::text) $function$;
REVOKE EXECUTE ON FUNCTION sessions.current_actor() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.current_actor() TO sessions_admin;

CREATE OR REPLACE FUNCTION sessions.erase_user(tenant text, user_to_erase text, pseudonym text DEFAULT NULL::text)
 RETURNS TABLE(sessions_deleted integer, events_rewritten integer, pseudonym_used text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_variable
DECLARE
  chosen text := coalesce(pseudonym, 'erased:' || gen_random_uuid()::text);
  ids uuid[];
  deleted integer;
  rewritten integer;
BEGIN
  IF tenant IS NULL OR user_to_erase IS NULL THEN
    RAISE EXCEPTION 'erase_user needs a tenant and a user id' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF chosen = user_to_erase OR char_length(chosen) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'the pseudonym must differ from the user id and have 1 to 200 characters'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM set_config('sessions.tenant', tenant, true);
  SELECT coalesce(array_agg(s.id), '{}') INTO ids
    FROM sessions.session AS s
   WHERE s.tenant_id = tenant AND s.user_id = user_to_erase;
  -- Revoked first, so that every node refuses them at once, then deleted (with their
  -- previous tokens, which hold addresses and user agents of rotations).
  UPDATE sessions.session AS s SET revoked_at = now(), revoked_reason = 'erased'
   WHERE s.tenant_id = tenant AND s.id = ANY(ids) AND s.revoked_at IS NULL;
  DELETE FROM sessions.session AS s WHERE s.tenant_id = tenant AND s.id = ANY(ids);
  GET DIAGNOSTICS deleted = ROW_COUNT;
  UPDATE sessions.event AS e
     SET user_id = chosen, ip = NULL, user_agent = NULL, rotation_ip = NULL,
         rotation_user_agent = NULL
   WHERE e.tenant_id = tenant AND (e.user_id = user_to_erase OR e.session_id = ANY(ids));
  GET DIAGNOSTICS rewritten = ROW_COUNT;
  -- The middleware's default actor names the user (`user:<id>`), in events about any
  -- session of the tenant (a user who revoked another's session, say): renamed too. An
  -- `actor` option of the application's own that embeds the user otherwise is its to map.
  UPDATE sessions.event AS e
     SET actor = CASE WHEN e.actor = user_to_erase THEN chosen ELSE 'user:' || chosen END
   WHERE e.tenant_id = tenant AND e.actor IN (user_to_erase, 'user:' || user_to_erase);
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, reason, actor)
  SELECT tenant, id, chosen, 'erased', 'erasure', sessions.current_actor()
    FROM unnest(ids) AS id;
  RETURN QUERY SELECT deleted, rewritten, chosen;
END
$function$;
ALTER FUNCTION sessions.erase_user(text,text,text) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.erase_user(text,text,text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.export_user(tenant text, user_to_export text)
 RETURNS jsonb
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  WITH own AS (
    SELECT s.* FROM sessions.session AS s
     WHERE s.tenant_id = tenant AND s.user_id = user_to_export
  )
  SELECT jsonb_build_object(
    'tenant', tenant,
    'user', user_to_export,
    'exported_at', now(),
    'sessions', coalesce((
      SELECT jsonb_agg(jsonb_build_object(
               'id', o.id, 'created_at', o.created_at, 'last_seen_at', o.last_seen_at,
               'expires_at', o.expires_at, 'revoked_at', o.revoked_at,
               'revoked_reason', o.revoked_reason, 'ip', o.ip, 'user_agent', o.user_agent,
               'device_name', o.device_name, 'authenticated_at', o.authenticated_at,
               'data', o.data, 'version', o.version)
             ORDER BY o.created_at, o.id)
        FROM own AS o), '[]'),
    'events', coalesce((
      SELECT jsonb_agg(jsonb_build_object(
               'id', e.id, 'occurred_at', e.occurred_at, 'session_id', e.session_id,
               'user_id', e.user_id, 'kind', e.kind, 'version', e.version,
               'changed_keys', e.changed_keys, 'reason', e.reason, 'actor', e.actor,
               'ip', e.ip, 'user_agent', e.user_agent, 'rotation_ip', e.rotation_ip,
               'rotation_user_agent', e.rotation_user_agent)
             ORDER BY e.occurred_at, e.id)
        FROM sessions.event AS e
       WHERE e.tenant_id = tenant
         AND (e.user_id = user_to_export OR e.session_id IN (SELECT o.id FROM own AS o))), '[]'))
$function$;
ALTER FUNCTION sessions.export_user(text,text) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.export_user(text,text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.gc_batch(batch_size integer DEFAULT 500)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  deleted integer;
BEGIN
  IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
    RAISE EXCEPTION 'sessions.gc_batch: batch_size must be between 1 and 10000, got %', batch_size
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM set_config('sessions.delete_reason', 'gc', true);
  -- The rows are deleted by their ctid (a locked row keeps it until this transaction
  -- ends): a join on the key could hash the whole table to find a few hundred rows.
  WITH revoked AS (
    SELECT ctid FROM sessions.session
     WHERE revoked_at IS NOT NULL
     ORDER BY revoked_at
     LIMIT batch_size
     FOR UPDATE SKIP LOCKED
  ), expired AS (
    SELECT ctid FROM sessions.session
     WHERE expires_at <= now() AND revoked_at IS NULL
     ORDER BY expires_at
     LIMIT batch_size
     FOR UPDATE SKIP LOCKED
  )
  DELETE FROM sessions.session
   WHERE ctid = ANY (ARRAY(
     -- Read lazily: expired rows are locked only as far as the batch still has room.
     SELECT ctid FROM revoked
     UNION ALL
     SELECT ctid FROM expired
     LIMIT batch_size));
  GET DIAGNOSTICS deleted = ROW_COUNT;
  PERFORM set_config('sessions.delete_reason', '', true);
  RETURN deleted;
END
$function$;
ALTER FUNCTION sessions.gc_batch(integer) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.gc_batch(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.gc_batch(integer) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.lock_session(tenant text, presented_hash bytea, lock_class integer, touch_interval interval, rotate_interval interval, restore_statement_timeout boolean)
 RETURNS TABLE(id uuid, tenant_id text, token_hash bytea, user_id text, data jsonb, version bigint, created_at timestamp with time zone, last_seen_at timestamp with time zone, idle_expires_at timestamp with time zone, absolute_expires_at timestamp with time zone, token_issued_at timestamp with time zone, touch_due boolean, rotation_due boolean, ended text, revoked_reason text, ended_at timestamp with time zone, in_grace boolean)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
BEGIN
  PERFORM pg_advisory_xact_lock(lock_class, hashtext(found.id::text))
     FROM (SELECT s.id FROM sessions.session AS s
            WHERE s.tenant_id = tenant AND s.token_hash = presented_hash
           UNION ALL
           SELECT p.session_id FROM sessions.previous_token AS p
            WHERE p.tenant_id = tenant AND p.token_hash = presented_hash
           LIMIT 1) AS found;
  IF restore_statement_timeout THEN
    PERFORM set_config('statement_timeout', current_setting('sessions.statement_timeout'), true);
  END IF;
  RETURN QUERY
    SELECT * FROM sessions.lookup_session(tenant, presented_hash, touch_interval, rotate_interval);
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.lock_session(text,bytea,integer,interval,interval,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.lock_session(text,bytea,integer,interval,interval,boolean) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.lock_session(text,bytea,integer,interval,interval,boolean) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.lock_session(tenant text, presented_hash bytea, lock_class integer, touch_interval interval, rotate_interval interval, restore_statement_timeout boolean, session_hint uuid)
 RETURNS TABLE(id uuid, tenant_id text, token_hash bytea, user_id text, data jsonb, version bigint, created_at timestamp with time zone, last_seen_at timestamp with time zone, idle_expires_at timestamp with time zone, absolute_expires_at timestamp with time zone, token_issued_at timestamp with time zone, touch_due boolean, rotation_due boolean, ended text, revoked_reason text, ended_at timestamp with time zone, in_grace boolean)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
BEGIN
  -- As lookup_session: the argument's tenant only where the call brought none.
  IF coalesce(current_setting('sessions.tenant', true), '') = '' THEN
    PERFORM set_config('sessions.tenant', tenant, true);
  END IF;
  PERFORM pg_advisory_xact_lock(lock_class, hashtext(found.id::text))
     FROM (SELECT s.id FROM sessions.session AS s
            WHERE s.tenant_id = tenant AND s.token_hash = presented_hash
              AND (session_hint IS NULL OR s.id = session_hint)
           UNION ALL
           SELECT p.session_id FROM sessions.previous_token AS p
            WHERE p.tenant_id = tenant AND p.token_hash = presented_hash
              AND (session_hint IS NULL OR p.session_id = session_hint)
           LIMIT 1) AS found;
  IF restore_statement_timeout THEN
    PERFORM set_config('statement_timeout', current_setting('sessions.statement_timeout'), true);
  END IF;
  RETURN QUERY
    SELECT * FROM sessions.lookup_session(tenant, presented_hash, touch_interval, rotate_interval,
                                          session_hint);
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.lock_session(text,bytea,integer,interval,interval,boolean,uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.lock_session(text,bytea,integer,interval,interval,boolean,uuid) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.lock_session(text,bytea,integer,interval,interval,boolean,uuid) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.log_delete()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  by_gc boolean := current_setting('sessions.delete_reason', true) = 'gc';
  entries jsonb;
BEGIN
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, reason, actor)
  SELECT o.tenant_id, o.id, o.user_id,
         CASE WHEN o.revoked_at IS NOT NULL THEN 'purged'
              WHEN o.expires_at <= now() THEN 'expired'
              ELSE 'destroyed' END,
         o.version, CASE WHEN by_gc THEN 'gc' END, sessions.current_actor()
    FROM old_rows o;
  SELECT jsonb_agg(jsonb_build_array(o.tenant_id, o.id, encode(o.token_hash, 'hex'), o.version,
                                     CASE WHEN o.revoked_at IS NOT NULL THEN 'purged'
                                          WHEN o.expires_at <= now() THEN 'expired'
                                          ELSE 'destroyed' END,
                                     o.user_id, CASE WHEN by_gc THEN 'gc' END, (extract(epoch FROM now()) * 1000)::bigint))
    INTO entries FROM old_rows o;
  IF entries IS NOT NULL THEN
    PERFORM sessions.notify_changes('delete', entries);
  END IF;
  RETURN NULL;
END
$function$;
ALTER FUNCTION sessions.log_delete() OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.log_delete() FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.log_insert()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  defer boolean := coalesce(current_setting('sessions.defer_notify', true) = 'on', false);
BEGIN
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, actor, ip, user_agent)
  SELECT n.tenant_id, n.id, n.user_id, 'created', n.version, sessions.current_actor(), n.ip, n.user_agent
    FROM new_rows n;
  -- Only the middleware's creations (create_session defers) are announced, after the
  -- commit: nobody caches a session before it exists, so there is nothing to evict, and
  -- a bulk INSERT of some other writer (a seed) announces nothing, as before.
  IF defer THEN
    PERFORM set_config('sessions.notify_pending',
      (coalesce(nullif(current_setting('sessions.notify_pending', true), '')::jsonb, '[]')
       || (SELECT jsonb_agg(jsonb_build_array(n.tenant_id, n.id, encode(n.token_hash, 'hex'),
                                              n.version, 'created', n.user_id, NULL, (extract(epoch FROM now()) * 1000)::bigint))
             FROM new_rows n))::text,
      false);
    PERFORM set_config('sessions.defer_notify', '', true);
  END IF;
  RETURN NULL;
END
$function$;
ALTER FUNCTION sessions.log_insert() OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.log_insert() FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.log_token_reuse()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, actor, ip, user_agent,
                              rotation_ip, rotation_user_agent)
  SELECT n.tenant_id, n.session_id, s.user_id, 'token_reused', sessions.current_actor(),
         n.reused_ip, n.reused_user_agent, n.rotation_ip, n.rotation_user_agent
    FROM new_rows n
    JOIN old_rows o ON o.tenant_id = n.tenant_id AND o.token_hash = n.token_hash
    LEFT JOIN sessions.session s ON s.tenant_id = n.tenant_id AND s.id = n.session_id
   WHERE o.reused_at IS NULL AND n.reused_at IS NOT NULL;
  RETURN NULL;
END
$function$;
ALTER FUNCTION sessions.log_token_reuse() OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.log_token_reuse() FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.log_update()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  actor text := coalesce(nullif(current_setting('sessions.actor', true), ''), session_user::text);
  defer boolean := coalesce(current_setting('sessions.defer_notify', true) = 'on', false);
  entries jsonb;
  deferred jsonb;
BEGIN
  WITH changed AS MATERIALIZED (
    SELECT n.tenant_id, n.id, n.user_id, n.version, o.token_hash AS old_hash,
           o.token_hash IS DISTINCT FROM n.token_hash AS rotated,
           o.user_id IS DISTINCT FROM n.user_id AS bound,
           o.revoked_at IS NULL AND n.revoked_at IS NOT NULL AS revoked,
           n.revoked_reason,
           CASE WHEN o.data IS DISTINCT FROM n.data THEN
             (SELECT coalesce(array_agg(k ORDER BY k), '{}')
                FROM (SELECT jsonb_object_keys(o.data) UNION SELECT jsonb_object_keys(n.data)) AS keys(k)
               WHERE o.data -> k IS DISTINCT FROM n.data -> k)
           END AS changed_keys,
           array_remove(ARRAY[
             CASE WHEN o.absolute_expires_at IS DISTINCT FROM n.absolute_expires_at
                  THEN 'absolute_expires_at' END,
             CASE WHEN o.ip IS DISTINCT FROM n.ip THEN 'ip' END,
             CASE WHEN o.revoked_at IS NOT NULL AND o.revoked_at IS DISTINCT FROM n.revoked_at
                  THEN 'revoked_at' END,
             CASE WHEN o.revoked_reason IS DISTINCT FROM n.revoked_reason
                       AND NOT (o.revoked_at IS NULL AND n.revoked_at IS NOT NULL)
                  THEN 'revoked_reason' END,
             CASE WHEN o.user_agent IS DISTINCT FROM n.user_agent THEN 'user_agent' END
           ], NULL) AS altered
      FROM old_rows o JOIN new_rows n ON n.tenant_id = o.tenant_id AND n.id = o.id
     WHERE n.version <> o.version
  ), logged AS (
    INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, changed_keys, reason, actor)
    SELECT c.tenant_id, c.id, c.user_id, e.kind, c.version, e.keys, e.reason, actor
      FROM changed c CROSS JOIN LATERAL (VALUES
             ('rotated', NULL::text[], NULL::text, c.rotated),
             ('user_bound', NULL, NULL, c.bound),
             ('revoked', NULL, c.revoked_reason, c.revoked),
             ('updated', c.changed_keys, NULL, c.changed_keys IS NOT NULL),
             ('altered', c.altered, NULL, cardinality(c.altered) > 0)
           ) AS e(kind, keys, reason, happened)
     WHERE e.happened
  )
  -- Data, rotation and binding may wait for notify_deferred (see there); a revocation
  -- or any other column never does.
  SELECT jsonb_agg(jsonb_build_array(tenant_id, id, encode(old_hash, 'hex'), version, change,
                                     user_id, reason, (extract(epoch FROM now()) * 1000)::bigint))
           FILTER (WHERE NOT (defer AND may_wait)),
         jsonb_agg(jsonb_build_array(tenant_id, id, encode(old_hash, 'hex'), version, change,
                                     user_id, reason, (extract(epoch FROM now()) * 1000)::bigint))
           FILTER (WHERE defer AND may_wait)
    INTO entries, deferred
    FROM (SELECT c.*, NOT c.revoked AND cardinality(c.altered) = 0 AS may_wait,
                 CASE WHEN c.revoked THEN 'revoked' WHEN c.rotated THEN 'rotated'
                      WHEN c.bound THEN 'bound' ELSE 'updated' END AS change,
                 CASE WHEN c.revoked THEN c.revoked_reason END AS reason
            FROM changed c) AS classified;
  IF entries IS NOT NULL THEN
    PERFORM sessions.notify_changes('update', entries);
  END IF;
  IF deferred IS NOT NULL THEN
    PERFORM set_config('sessions.notify_pending',
      (coalesce(nullif(current_setting('sessions.notify_pending', true), '')::jsonb, '[]') || deferred)::text,
      false);
  END IF;
  IF defer THEN
    PERFORM set_config('sessions.defer_notify', '', true);
  END IF;
  RETURN NULL;
END
$function$;
ALTER FUNCTION sessions.log_update() OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.log_update() FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.lookup_session(tenant text, presented_hash bytea, touch_interval interval, rotate_interval interval)
 RETURNS TABLE(id uuid, tenant_id text, token_hash bytea, user_id text, data jsonb, version bigint, created_at timestamp with time zone, last_seen_at timestamp with time zone, idle_expires_at timestamp with time zone, absolute_expires_at timestamp with time zone, token_issued_at timestamp with time zone, touch_due boolean, rotation_due boolean, ended text, revoked_reason text, ended_at timestamp with time zone, in_grace boolean)
 LANGUAGE plpgsql
 STABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  RETURN QUERY
    SELECT s.id, s.tenant_id, s.token_hash, s.user_id, s.data, s.version, s.created_at,
           s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, s.token_issued_at,
           s.last_seen_at < now() - touch_interval,
           coalesce(s.token_issued_at <= now() - rotate_interval, false),
           -- Revoked first: a revocation only ever ends a live row, so it is the cause.
           CASE WHEN s.revoked_at IS NOT NULL THEN 'revoked'
                WHEN s.expires_at <= now() THEN 'expired' END,
           s.revoked_reason, coalesce(s.revoked_at, s.expires_at),
           NULL::boolean
      FROM sessions.session AS s
     WHERE s.tenant_id = tenant AND s.token_hash = presented_hash;
  IF FOUND THEN
    RETURN;
  END IF;
  RETURN QUERY
    SELECT s.id, s.tenant_id, s.token_hash, s.user_id, s.data, s.version, s.created_at,
           s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, s.token_issued_at,
           s.last_seen_at < now() - touch_interval,
           coalesce(s.token_issued_at <= now() - rotate_interval, false),
           CASE WHEN s.revoked_at IS NOT NULL THEN 'revoked'
                WHEN s.expires_at <= now() THEN 'expired' END,
           s.revoked_reason, coalesce(s.revoked_at, s.expires_at),
           p.grace_expires_at > now()
      FROM sessions.previous_token AS p
      JOIN sessions.session AS s ON s.tenant_id = p.tenant_id AND s.id = p.session_id
     WHERE p.tenant_id = tenant AND p.token_hash = presented_hash;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.lookup_session(text,bytea,interval,interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.lookup_session(text,bytea,interval,interval) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.lookup_session(text,bytea,interval,interval) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.lookup_session(tenant text, presented_hash bytea, touch_interval interval, rotate_interval interval, session_hint uuid)
 RETURNS TABLE(id uuid, tenant_id text, token_hash bytea, user_id text, data jsonb, version bigint, created_at timestamp with time zone, last_seen_at timestamp with time zone, idle_expires_at timestamp with time zone, absolute_expires_at timestamp with time zone, token_issued_at timestamp with time zone, touch_due boolean, rotation_due boolean, ended text, revoked_reason text, ended_at timestamp with time zone, in_grace boolean)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
  -- Run by itself on the worker holding the session (Citus, distributed by the hint),
  -- the call has no tenant yet: it takes its argument's. Where the transaction set one
  -- (always, on one server), that one stays, and row-level security holds it to it.
  IF coalesce(current_setting('sessions.tenant', true), '') = '' THEN
    PERFORM set_config('sessions.tenant', tenant, true);
  END IF;
  RETURN QUERY
    SELECT s.id, s.tenant_id, s.token_hash, s.user_id, s.data, s.version, s.created_at,
           s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, s.token_issued_at,
           s.last_seen_at < now() - touch_interval,
           coalesce(s.token_issued_at <= now() - rotate_interval, false),
           -- Revoked first: a revocation only ever ends a live row, so it is the cause.
           CASE WHEN s.revoked_at IS NOT NULL THEN 'revoked'
                WHEN s.expires_at <= now() THEN 'expired' END,
           s.revoked_reason, coalesce(s.revoked_at, s.expires_at),
           NULL::boolean
      FROM sessions.session AS s
     WHERE s.tenant_id = tenant AND s.token_hash = presented_hash
       AND (session_hint IS NULL OR s.id = session_hint);
  IF FOUND THEN
    RETURN;
  END IF;
  RETURN QUERY
    SELECT s.id, s.tenant_id, s.token_hash, s.user_id, s.data, s.version, s.created_at,
           s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, s.token_issued_at,
           s.last_seen_at < now() - touch_interval,
           coalesce(s.token_issued_at <= now() - rotate_interval, false),
           CASE WHEN s.revoked_at IS NOT NULL THEN 'revoked'
                WHEN s.expires_at <= now() THEN 'expired' END,
           s.revoked_reason, coalesce(s.revoked_at, s.expires_at),
           p.grace_expires_at > now()
      FROM sessions.previous_token AS p
      JOIN sessions.session AS s ON s.tenant_id = p.tenant_id AND s.id = p.session_id
     WHERE p.tenant_id = tenant AND p.token_hash = presented_hash
       AND (session_hint IS NULL OR p.session_id = session_hint);
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.lookup_session(text,bytea,interval,interval,uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.lookup_session(text,bytea,interval,interval,uuid) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.lookup_session(text,bytea,interval,interval,uuid) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.network_prefix(ip inet)
 RETURNS cidr
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
AS $function$
  SELECT CASE
    WHEN pg_catalog.family(ip) = 4 THEN pg_catalog.network(pg_catalog.set_masklen(ip, 24))
    WHEN ip OPERATOR(pg_catalog.<<) inet '::ffff:0.0.0.0/96' THEN
      pg_catalog.network(pg_catalog.set_masklen(
        inet '0.0.0.0' OPERATOR(pg_catalog.+) (ip OPERATOR(pg_catalog.-) inet '::ffff:0.0.0.0'), 24))
    ELSE pg_catalog.network(pg_catalog.set_masklen(ip, 48))
  END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.network_prefix(inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.network_prefix(inet) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.network_prefix(inet) TO sessions_auditor;

CREATE OR REPLACE FUNCTION sessions.notify_changes(op text, entries jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  entry jsonb;
  batch text := '';
  entry_text text;
  tenant text;
BEGIN
  -- The common case (one session per statement) without the batching loop.
  IF jsonb_array_length(entries) = 1 THEN
    PERFORM pg_notify('sessions_changed', format('{"op": "%s", "s": %s}', op, entries::text));
    RETURN;
  END IF;
  IF jsonb_array_length(entries) > 1000 THEN
    FOR tenant IN SELECT DISTINCT e ->> 0 FROM jsonb_array_elements(entries) AS e LOOP
      PERFORM pg_notify('sessions_changed', jsonb_build_object('op', 'flush', 'tenant', tenant)::text);
    END LOOP;
    RETURN;
  END IF;
  FOR entry IN SELECT e FROM jsonb_array_elements(entries) AS e LOOP
    entry_text := entry::text;
    IF batch <> '' AND octet_length(batch) + octet_length(entry_text) + 32 > 7900 THEN
      PERFORM pg_notify('sessions_changed', format('{"op": "%s", "s": [%s]}', op, batch));
      batch := '';
    END IF;
    batch := CASE WHEN batch = '' THEN entry_text ELSE batch || ', ' || entry_text END;
  END LOOP;
  IF batch <> '' THEN
    PERFORM pg_notify('sessions_changed', format('{"op": "%s", "s": [%s]}', op, batch));
  END IF;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.notify_changes(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.notify_changes(text,jsonb) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.notify_changes(text,jsonb) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.notify_deferred()
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  pending text := current_setting('sessions.notify_pending', true);
BEGIN
  IF pending IS NULL OR pending = '' THEN
    RETURN true;
  END IF;
  PERFORM set_config('sessions.notify_pending', '', false);
  BEGIN
    PERFORM sessions.notify_changes('update', pending::jsonb);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pg-sessions: deferred session notifications not sent: %', SQLERRM;
    RETURN false;
  END;
  RETURN true;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.notify_deferred() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.notify_deferred() TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.notify_deferred() TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.prune_events(older_than interval, batch_size integer DEFAULT 5000)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  deleted integer;
BEGIN
  IF older_than IS NULL OR older_than <= interval '0' THEN
    RAISE EXCEPTION 'sessions.prune_events: older_than must be a positive interval, got %',
      coalesce(older_than::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF batch_size IS NULL OR batch_size < 1 OR batch_size > 100000 THEN
    RAISE EXCEPTION 'sessions.prune_events: batch_size must be between 1 and 100000, got %',
      coalesce(batch_size::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- 'pgse' and 3 (gc holds 'pgse' and 2).
  PERFORM pg_advisory_xact_lock(1885827941, 3);
  WITH doomed AS (
    SELECT tenant_id, id FROM sessions.event
     WHERE occurred_at < now() - older_than
     LIMIT batch_size
  )
  DELETE FROM sessions.event e USING doomed d
   WHERE e.tenant_id = d.tenant_id AND e.id = d.id;
  GET DIAGNOSTICS deleted = ROW_COUNT;
  RETURN deleted;
END
$function$;
ALTER FUNCTION sessions.prune_events(interval,integer) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.prune_events(interval,integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.reauthenticate(session_id uuid)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
  tenant text := nullif(current_setting('sessions.tenant', true), '');
  bound_user text;
BEGIN
  UPDATE sessions.session AS s
     SET authenticated_at = now()
   WHERE s.tenant_id = tenant AND s.id = session_id AND s.user_id IS NOT NULL
     AND s.revoked_at IS NULL AND least(s.idle_expires_at, s.absolute_expires_at) > now()
  RETURNING s.user_id INTO bound_user;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, actor)
  VALUES (tenant, session_id, bound_user, 'reauthenticated', sessions.current_actor());
  RETURN true;
END
$function$;
ALTER FUNCTION sessions.reauthenticate(uuid) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.reauthenticate(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.reauthenticate(uuid) TO sessions_app;

CREATE OR REPLACE FUNCTION sessions.revoke_session(id uuid, reason text, tenant text DEFAULT NULL::text)
 RETURNS TABLE(tenant_id text, session_id uuid)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
BEGIN
  IF revoke_session.id IS NULL THEN
    RAISE EXCEPTION 'sessions.revoke_session: id must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM sessions.check_revocation_reason(revoke_session.reason);
  RETURN QUERY
    UPDATE sessions.session s
       SET revoked_at = now(), revoked_reason = revoke_session.reason
     WHERE s.id = revoke_session.id
       AND (revoke_session.tenant IS NULL OR s.tenant_id = revoke_session.tenant)
       AND s.revoked_at IS NULL AND s.expires_at > now()
    RETURNING s.tenant_id, s.id;
END
$function$;
ALTER FUNCTION sessions.revoke_session(uuid,text,text) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.revoke_session(uuid,text,text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.revoke_user(user_id text, reason text, tenant text DEFAULT NULL::text)
 RETURNS TABLE(tenant_id text, session_id uuid)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
BEGIN
  IF revoke_user.user_id IS NULL OR revoke_user.user_id = '' THEN
    RAISE EXCEPTION 'sessions.revoke_user: user_id must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM sessions.check_revocation_reason(revoke_user.reason);
  RETURN QUERY
    UPDATE sessions.session s
       SET revoked_at = now(), revoked_reason = revoke_user.reason
     WHERE s.user_id = revoke_user.user_id
       AND (revoke_user.tenant IS NULL OR s.tenant_id = revoke_user.tenant)
       AND s.revoked_at IS NULL AND s.expires_at > now()
    RETURNING s.tenant_id, s.id;
END
$function$;
ALTER FUNCTION sessions.revoke_user(text,text,text) OWNER TO sessions_admin;
REVOKE EXECUTE ON FUNCTION sessions.revoke_user(text,text,text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION sessions.save_session(tenant text, actor text, session_id uuid, loaded_version bigint, patch jsonb, removed text[], expected jsonb, bind_user boolean, new_user_id text, new_token_hash bytea, only_if_token_hash bytea, rotation_ip inet, rotation_user_agent text, idle_timeout interval, rotation_grace interval, relaxed boolean)
 RETURNS TABLE(token_hash bytea, user_id text, data jsonb, version bigint, last_seen_ms double precision, idle_expires_ms double precision, absolute_expires_ms double precision, token_issued_ms double precision)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
  replaced bytea;
  current_version bigint;
  rotate_to bytea := new_token_hash;
  attempt integer;
  -- FOUND after a FOR loop says whether it looped, not whether the UPDATE matched.
  saved boolean := false;
BEGIN
  PERFORM set_config('sessions.tenant', tenant, true), set_config('sessions.actor', actor, true);
  IF relaxed AND new_token_hash IS NULL AND NOT bind_user THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  IF rotate_to IS NOT NULL THEN
    -- The token being replaced is the row's newest, read under the row lock: a
    -- concurrent rotation that committed first is recorded, never lost.
    SELECT s.token_hash, s.version INTO replaced, current_version
      FROM sessions.session AS s
     WHERE s.tenant_id = tenant AND s.id = session_id
       AND s.revoked_at IS NULL AND least(s.idle_expires_at, s.absolute_expires_at) > now()
       FOR UPDATE;
    IF NOT FOUND THEN
      RETURN;
    END IF;
    IF only_if_token_hash IS NOT NULL AND replaced <> only_if_token_hash THEN
      rotate_to := NULL;
    END IF;
  END IF;
  -- First only if the row still has the loaded version: then the data it writes is the
  -- loaded data with this delta, which the caller knows, and `data` comes back NULL. If
  -- another request changed the row meanwhile (or it ended, or a strict expectation
  -- fails), once more on whatever the row is now, returning its data.
  FOR attempt IN 1..2 LOOP
    PERFORM set_config('sessions.defer_notify', 'on', true);
    -- The times are computed outside the UPDATE: Citus refuses a distributed UPDATE
    -- whose RETURNING calls a function that is not IMMUTABLE (extract() is STABLE).
    RETURN QUERY
      WITH written AS (
      UPDATE sessions.session AS s
         SET data = (s.data || patch) - removed,
             last_seen_at = greatest(s.last_seen_at, now()),
             idle_expires_at = greatest(s.idle_expires_at,
                                        least(now() + idle_timeout, s.absolute_expires_at)),
             token_hash = coalesce(rotate_to, s.token_hash),
             token_issued_at = CASE WHEN rotate_to IS NULL THEN s.token_issued_at ELSE now() END,
             user_id = CASE WHEN bind_user THEN new_user_id ELSE s.user_id END,
             authenticated_at = CASE WHEN bind_user THEN now() ELSE s.authenticated_at END
       WHERE s.tenant_id = tenant AND s.id = session_id
         AND s.revoked_at IS NULL AND least(s.idle_expires_at, s.absolute_expires_at) > now()
         -- The row's version, not the one read under the lock: equal (this transaction
         -- holds the lock), but a constant the planner could fold to false, and Citus
         -- refuses a delegated function's statement that names no shard.
         AND (attempt = 2 OR s.version = loaded_version)
         AND (expected IS NULL OR NOT EXISTS (
               SELECT FROM jsonb_each(expected) AS e(key, loaded)
                WHERE CASE WHEN jsonb_array_length(e.loaded) = 0 THEN s.data ? e.key
                           ELSE (s.data -> e.key) IS DISTINCT FROM (e.loaded -> 0) END))
      RETURNING s.token_hash, s.user_id, CASE WHEN attempt = 1 THEN NULL ELSE s.data END AS data,
                s.version, s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, s.token_issued_at)
      SELECT w.token_hash, w.user_id, w.data, w.version,
             (extract(epoch FROM w.last_seen_at) * 1000)::float8,
             (extract(epoch FROM w.idle_expires_at) * 1000)::float8,
             (extract(epoch FROM w.absolute_expires_at) * 1000)::float8,
             (extract(epoch FROM w.token_issued_at) * 1000)::float8
        FROM written AS w;
    saved := FOUND;
    EXIT WHEN saved;
  END LOOP;
  -- A retry of a rotation that had committed finds its own token: nothing replaced.
  IF saved AND rotate_to IS NOT NULL AND rotate_to IS DISTINCT FROM replaced THEN
    INSERT INTO sessions.previous_token (tenant_id, token_hash, session_id, grace_expires_at,
                                         rotation_ip, rotation_user_agent)
    VALUES (tenant, replaced, session_id, now() + rotation_grace, rotation_ip, rotation_user_agent)
    ON CONFLICT DO NOTHING;
  END IF;
END
$function$;
REVOKE EXECUTE ON FUNCTION sessions.save_session(text,text,uuid,bigint,jsonb,text[],jsonb,boolean,text,bytea,bytea,inet,text,interval,interval,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.save_session(text,text,uuid,bigint,jsonb,text[],jsonb,boolean,text,bytea,bytea,inet,text,interval,interval,boolean) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.save_session(text,text,uuid,bigint,jsonb,text[],jsonb,boolean,text,bytea,bytea,inet,text,interval,interval,boolean) TO sessions_app;

CREATE TRIGGER previous_token_log_reuse AFTER UPDATE ON sessions.previous_token REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_token_reuse();
CREATE TRIGGER session_bump_version BEFORE UPDATE ON sessions.session FOR EACH ROW EXECUTE FUNCTION sessions.bump_version();
CREATE TRIGGER session_log_delete AFTER DELETE ON sessions.session REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_delete();
CREATE TRIGGER session_log_insert AFTER INSERT ON sessions.session REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_insert();
CREATE TRIGGER session_log_update AFTER UPDATE ON sessions.session REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_update();

CREATE VIEW sessions.active_sessions_per_tenant WITH (security_invoker = true) AS
 SELECT tenant_id,
    count(*) AS active_sessions,
    count(DISTINCT user_id) AS users,
    count(*) FILTER (WHERE user_id IS NULL) AS anonymous_sessions,
    min(created_at) AS oldest_created_at,
    max(created_at) AS newest_created_at
   FROM sessions.session
  WHERE revoked_at IS NULL AND expires_at > now()
  GROUP BY tenant_id;
GRANT SELECT ON TABLE sessions.active_sessions_per_tenant TO sessions_auditor;

CREATE VIEW sessions.daily_session_counts WITH (security_invoker = true) AS
 SELECT (occurred_at AT TIME ZONE 'UTC'::text)::date AS day,
    tenant_id,
    count(*) FILTER (WHERE kind = 'created'::text) AS created,
    count(*) FILTER (WHERE kind <> 'created'::text) AS ended,
    count(*) FILTER (WHERE kind = 'revoked'::text) AS revoked,
    count(*) FILTER (WHERE kind = 'expired'::text) AS expired,
    count(*) FILTER (WHERE kind = 'destroyed'::text) AS destroyed
   FROM sessions.event
  WHERE kind = ANY (ARRAY['created'::text, 'revoked'::text, 'expired'::text, 'destroyed'::text])
  GROUP BY ((occurred_at AT TIME ZONE 'UTC'::text)::date), tenant_id;
GRANT SELECT ON TABLE sessions.daily_session_counts TO sessions_auditor;

CREATE VIEW sessions.peak_sessions_per_hour WITH (security_invoker = true) AS
 WITH changes AS (
         SELECT e.tenant_id,
            e.occurred_at,
                CASE
                    WHEN e.kind = 'created'::text THEN 1
                    ELSE '-1'::integer
                END AS delta
           FROM sessions.event e
          WHERE e.kind = 'created'::text OR (e.kind = ANY (ARRAY['revoked'::text, 'expired'::text, 'destroyed'::text])) AND (EXISTS ( SELECT
                   FROM sessions.event c
                  WHERE c.tenant_id = e.tenant_id AND c.session_id = e.session_id AND c.kind = 'created'::text))
        ), instants AS (
         SELECT changes.tenant_id,
            changes.occurred_at,
            sum(changes.delta) AS delta,
            count(*) FILTER (WHERE changes.delta > 0) AS created,
            count(*) FILTER (WHERE changes.delta < 0) AS ended
           FROM changes
          GROUP BY changes.tenant_id, changes.occurred_at
        ), levels AS (
         SELECT instants.tenant_id,
            instants.occurred_at,
            instants.created,
            instants.ended,
            sum(instants.delta) OVER (PARTITION BY instants.tenant_id ORDER BY instants.occurred_at) AS level
           FROM instants
        ), busy_hours AS (
         SELECT levels.tenant_id,
            date_trunc('hour'::text, levels.occurred_at, 'UTC'::text) AS hour,
            max(levels.level) AS peak,
            (array_agg(levels.level ORDER BY levels.occurred_at DESC))[1] AS closing,
            sum(levels.created) AS created,
            sum(levels.ended) AS ended
           FROM levels
          GROUP BY levels.tenant_id, (date_trunc('hour'::text, levels.occurred_at, 'UTC'::text))
        ), hours AS (
         SELECT b.tenant_id,
            h.hour
           FROM ( SELECT busy_hours.tenant_id,
                    min(busy_hours.hour) AS first_hour,
                    max(busy_hours.hour) AS last_hour
                   FROM busy_hours
                  GROUP BY busy_hours.tenant_id) b
             CROSS JOIN LATERAL generate_series(b.first_hour, GREATEST(b.last_hour, date_trunc('hour'::text, now(), 'UTC'::text)), '01:00:00'::interval) h(hour)
        ), filled AS (
         SELECT h.tenant_id,
            h.hour,
            bh.peak,
            bh.closing,
            COALESCE(bh.created, 0::numeric) AS created,
            COALESCE(bh.ended, 0::numeric) AS ended,
            count(bh.closing) OVER (PARTITION BY h.tenant_id ORDER BY h.hour) AS run
           FROM hours h
             LEFT JOIN busy_hours bh ON bh.tenant_id = h.tenant_id AND bh.hour = h.hour
        ), closing AS (
         SELECT filled.tenant_id,
            filled.hour,
            filled.peak,
            filled.created,
            filled.ended,
            max(filled.closing) OVER (PARTITION BY filled.tenant_id, filled.run) AS level_at_end
           FROM filled
        ), opening AS (
         SELECT closing.tenant_id,
            closing.hour,
            closing.peak,
            closing.created,
            closing.ended,
            COALESCE(lag(closing.level_at_end) OVER (PARTITION BY closing.tenant_id ORDER BY closing.hour), 0::numeric) AS at_start
           FROM closing
        )
 SELECT hour,
    tenant_id,
    at_start::bigint AS sessions_at_start,
    GREATEST(peak, at_start)::bigint AS peak_sessions,
    created::bigint AS created,
    ended::bigint AS ended
   FROM opening;
GRANT SELECT ON TABLE sessions.peak_sessions_per_hour TO sessions_auditor;

CREATE VIEW sessions.sessions_per_user WITH (security_invoker = true) AS
 SELECT tenant_id,
    user_id,
    count(*) AS active_sessions,
    count(DISTINCT ip) AS distinct_ips,
    max(last_seen_at) AS last_seen_at,
    min(created_at) AS first_created_at
   FROM sessions.session
  WHERE user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > now()
  GROUP BY tenant_id, user_id;
GRANT SELECT ON TABLE sessions.sessions_per_user TO sessions_auditor;

CREATE VIEW sessions.user_devices WITH (security_invoker = true) AS
 SELECT tenant_id,
    user_id,
    id AS session_id,
    created_at,
    last_seen_at,
    expires_at,
    ip,
    sessions.network_prefix(ip) AS network,
    user_agent,
    version
   FROM sessions.session
  WHERE user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > now();
GRANT SELECT ON TABLE sessions.user_devices TO sessions_auditor;

CREATE VIEW sessions.users_with_many_networks WITH (security_invoker = true) AS
 WITH logins AS (
         SELECT b.tenant_id,
            b.user_id,
            b.session_id,
            b.occurred_at,
            sessions.network_prefix(c.ip) AS network
           FROM sessions.event b
             JOIN sessions.event c ON c.tenant_id = b.tenant_id AND c.session_id = b.session_id AND c.kind = 'created'::text
          WHERE (b.kind = ANY (ARRAY['created'::text, 'user_bound'::text])) AND b.user_id IS NOT NULL AND c.ip IS NOT NULL
        )
 SELECT (occurred_at AT TIME ZONE 'UTC'::text)::date AS day,
    tenant_id,
    user_id,
    count(DISTINCT session_id) AS sessions,
    count(DISTINCT network) AS networks,
    array_agg(DISTINCT network ORDER BY network)::text[] AS network_list
   FROM logins
  GROUP BY ((occurred_at AT TIME ZONE 'UTC'::text)::date), tenant_id, user_id
 HAVING count(DISTINCT network) >= 4;
GRANT SELECT ON TABLE sessions.users_with_many_networks TO sessions_auditor;

CREATE VIEW sessions.users_with_many_revocations WITH (security_invoker = true) AS
 SELECT (occurred_at AT TIME ZONE 'UTC'::text)::date AS day,
    tenant_id,
    user_id,
    count(*) AS revocations,
    array_agg(DISTINCT reason ORDER BY reason) AS reasons,
    array_agg(DISTINCT actor ORDER BY actor) AS actors
   FROM sessions.event
  WHERE kind = 'revoked'::text AND user_id IS NOT NULL
  GROUP BY ((occurred_at AT TIME ZONE 'UTC'::text)::date), tenant_id, user_id
 HAVING count(*) >= 3;
GRANT SELECT ON TABLE sessions.users_with_many_revocations TO sessions_auditor;

CREATE VIEW sessions.users_with_many_sessions WITH (security_invoker = true) AS
 SELECT tenant_id,
    user_id,
    count(*) AS live_sessions,
    count(DISTINCT ip) AS distinct_ips,
    count(DISTINCT sessions.network_prefix(ip)) AS distinct_networks,
    min(created_at) AS oldest_created_at,
    max(last_seen_at) AS last_seen_at
   FROM sessions.session
  WHERE user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > now()
  GROUP BY tenant_id, user_id
 HAVING count(*) > 5;
GRANT SELECT ON TABLE sessions.users_with_many_sessions TO sessions_auditor;
