-- migrate:up
-- Lifecycle events on every node: each notification entry now says what happened, not
-- only which session to evict: [tenant, id, token hash, version] grows to
-- [tenant, id, token hash, version, change, user id, reason, at ms], where change is
-- `revoked` (reason: the revocation's), `rotated`, `bound`, `updated` (log_update),
-- `purged`, `expired`, `destroyed` (log_delete; reason `gc` when garbage collection
-- deleted it) or `created` (log_insert, for the middleware's creations, deferred to
-- notify_deferred like a data write). Listeners of the previous release read the longer
-- entries as malformed and clear their cache: safe during a rolling deploy.

CREATE OR REPLACE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

CREATE OR REPLACE FUNCTION sessions.log_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

CREATE OR REPLACE FUNCTION sessions.log_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

CREATE OR REPLACE FUNCTION sessions.create_session(
  tenant text,
  actor text,
  new_token_hash bytea,
  new_data jsonb,
  new_user_id text,
  client_ip inet,
  client_user_agent text,
  idle_timeout interval,
  absolute_timeout interval,
  relaxed boolean
)
RETURNS TABLE (
  id uuid,
  version bigint,
  created_ms float8,
  last_seen_ms float8,
  idle_expires_ms float8,
  absolute_expires_ms float8,
  token_issued_ms float8
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- migrate:down
CREATE OR REPLACE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
  SELECT jsonb_agg(jsonb_build_array(tenant_id, id, encode(old_hash, 'hex'), version))
           FILTER (WHERE NOT (defer AND may_wait)),
         jsonb_agg(jsonb_build_array(tenant_id, id, encode(old_hash, 'hex'), version))
           FILTER (WHERE defer AND may_wait)
    INTO entries, deferred
    FROM (SELECT c.*, NOT c.revoked AND cardinality(c.altered) = 0 AS may_wait
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
$$;

CREATE OR REPLACE FUNCTION sessions.log_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
  SELECT jsonb_agg(jsonb_build_array(o.tenant_id, o.id, encode(o.token_hash, 'hex'), o.version))
    INTO entries FROM old_rows o;
  IF entries IS NOT NULL THEN
    PERFORM sessions.notify_changes('delete', entries);
  END IF;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION sessions.log_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, actor, ip, user_agent)
  SELECT n.tenant_id, n.id, n.user_id, 'created', n.version, sessions.current_actor(), n.ip, n.user_agent
    FROM new_rows n;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION sessions.create_session(
  tenant text,
  actor text,
  new_token_hash bytea,
  new_data jsonb,
  new_user_id text,
  client_ip inet,
  client_user_agent text,
  idle_timeout interval,
  absolute_timeout interval,
  relaxed boolean
)
RETURNS TABLE (
  id uuid,
  version bigint,
  created_ms float8,
  last_seen_ms float8,
  idle_expires_ms float8,
  absolute_expires_ms float8,
  token_issued_ms float8
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  PERFORM set_config('sessions.tenant', tenant, true), set_config('sessions.actor', actor, true);
  IF relaxed AND new_user_id IS NULL THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
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
$$;
