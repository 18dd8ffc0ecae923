-- migrate:up
-- The middleware's writes as functions, and rotation and binding off the notify lock.
--
-- 1. sessions.create_session() and sessions.save_session(): the middleware's two
--    writes, whose plans PL/pgSQL keeps per connection (as lookup_session's, migration
--    5): the text the middleware sends no longer changes with the request, so neither
--    the application nor the database builds or plans a statement per write. Each sets
--    the transaction's tenant (row-level security) and actor (the event log) itself.
--    SECURITY INVOKER: row-level security applies as to the caller's own statements.
--
-- 2. log_update defers the notification of a rotation and of a user binding too, when
--    the statement asked (sessions.defer_notify): a rotated-away token reaches its
--    session for the rotation grace period anyway, and theft detection reads the
--    previous_token row, not the other nodes' caches. A revocation and any other
--    column still notify inside their commit; so does every delete.

-- A new session. `relaxed`: commit it with synchronous_commit = off (the
-- middleware's `durability: 'relaxed'`, for a session no user is bound to yet).
CREATE FUNCTION sessions.create_session(
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
                                       absolute_expires_at, ip, user_agent)
    VALUES (tenant, new_token_hash, new_user_id, new_data,
            now() + least(idle_timeout, absolute_timeout), now() + absolute_timeout,
            client_ip, client_user_agent)
    RETURNING s.id, s.version, (extract(epoch FROM s.created_at) * 1000)::float8,
              (extract(epoch FROM s.last_seen_at) * 1000)::float8, (extract(epoch FROM s.idle_expires_at) * 1000)::float8,
              (extract(epoch FROM s.absolute_expires_at) * 1000)::float8,
              (extract(epoch FROM s.token_issued_at) * 1000)::float8;
END
$$;

-- The request's changes to a live session, found by its public id whatever happened to
-- its token meanwhile (so a destroyed, revoked or expired session is never brought
-- back): data || patch - removed, a touch, and optionally a new token and a user.
--
-- `loaded_version`: the version the request loaded (see the loop below for why).
-- `expected` (strict mode): {"key": [loaded json]} or {"key": []} (absent at load); a
-- key that no longer holds what was loaded matches nothing (a conflict), and no row
-- comes back.
-- `new_token_hash`: a rotation. The replaced token (the row's at that moment, under the
-- row lock) is recorded in previous_token with its grace period. `only_if_token_hash`
-- (periodic rotation): rotate only while the row still has that token, else just save.
-- `bind_user`: set user_id to `new_user_id` (NULL unbinds).
-- `relaxed`: a change of data alone commits with synchronous_commit = off.
-- Every notification is deferred to sessions.notify_deferred() (the caller sends it
-- right after its COMMIT), as log_update allows for data, rotation and binding.
-- Times come back as milliseconds since the epoch: the caller turns them into dates
-- without parsing timestamp text.
CREATE FUNCTION sessions.save_session(
  tenant text,
  actor text,
  session_id uuid,
  loaded_version bigint,
  patch jsonb,
  removed text[],
  expected jsonb,
  bind_user boolean,
  new_user_id text,
  new_token_hash bytea,
  only_if_token_hash bytea,
  rotation_ip inet,
  rotation_user_agent text,
  idle_timeout interval,
  rotation_grace interval,
  relaxed boolean
)
RETURNS TABLE (
  token_hash bytea,
  user_id text,
  data jsonb,
  version bigint,
  last_seen_ms float8,
  idle_expires_ms float8,
  absolute_expires_ms float8,
  token_issued_ms float8
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
    RETURN QUERY
      UPDATE sessions.session AS s
         SET data = (s.data || patch) - removed,
             last_seen_at = greatest(s.last_seen_at, now()),
             idle_expires_at = greatest(s.idle_expires_at,
                                        least(now() + idle_timeout, s.absolute_expires_at)),
             token_hash = coalesce(rotate_to, s.token_hash),
             token_issued_at = CASE WHEN rotate_to IS NULL THEN s.token_issued_at ELSE now() END,
             user_id = CASE WHEN bind_user THEN new_user_id ELSE s.user_id END
       WHERE s.tenant_id = tenant AND s.id = session_id
         AND s.revoked_at IS NULL AND least(s.idle_expires_at, s.absolute_expires_at) > now()
         AND (attempt = 2 OR coalesce(current_version, s.version) = loaded_version)
         AND (expected IS NULL OR NOT EXISTS (
               SELECT FROM jsonb_each(expected) AS e(key, loaded)
                WHERE CASE WHEN jsonb_array_length(e.loaded) = 0 THEN s.data ? e.key
                           ELSE (s.data -> e.key) IS DISTINCT FROM (e.loaded -> 0) END))
      RETURNING s.token_hash, s.user_id, CASE WHEN attempt = 1 THEN NULL ELSE s.data END,
                s.version, (extract(epoch FROM s.last_seen_at) * 1000)::float8,
                (extract(epoch FROM s.idle_expires_at) * 1000)::float8,
                (extract(epoch FROM s.absolute_expires_at) * 1000)::float8,
                (extract(epoch FROM s.token_issued_at) * 1000)::float8;
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
$$;

REVOKE EXECUTE ON FUNCTION
  sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval,
                          boolean),
  sessions.save_session(text, text, uuid, bigint, jsonb, text[], jsonb, boolean, text, bytea,
                        bytea, inet, text, interval, interval, boolean)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval,
                          boolean),
  sessions.save_session(text, text, uuid, bigint, jsonb, text[], jsonb, boolean, text, bytea,
                        bytea, inet, text, interval, interval, boolean)
  TO sessions_app, sessions_admin;

-- log_update as in 20260101000003, but for which changes may wait for notify_deferred:
-- data, rotation and user binding (not a revocation, nor any other column).
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

-- migrate:down
DROP FUNCTION sessions.save_session(text, text, uuid, bigint, jsonb, text[], jsonb, boolean,
                                    text, bytea, bytea, inet, text, interval, interval, boolean);
DROP FUNCTION sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval,
                                      interval, boolean);
-- log_update as 20260101000003 defines it: only a change of data alone may be deferred.
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
  SELECT jsonb_agg(jsonb_build_array(tenant_id, id, encode(old_hash, 'hex'), version))
           FILTER (WHERE NOT (defer AND data_only)),
         jsonb_agg(jsonb_build_array(tenant_id, id, encode(old_hash, 'hex'), version))
           FILTER (WHERE defer AND data_only)
    INTO entries, deferred
    FROM (SELECT c.*, c.changed_keys IS NOT NULL AND NOT (c.rotated OR c.bound OR c.revoked)
                      AND cardinality(c.altered) = 0 AS data_only
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
