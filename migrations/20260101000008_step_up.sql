-- migrate:up
-- Step-up ("sudo mode") on the session row: `authenticated_at` is when the user last
-- proved who they are. A sign-in sets it (create_session with a user, save_session with
-- bind_user), `sessions.reauthenticate()` sets it again (and logs `reauthenticated`), a
-- rotation keeps it. It is not session content: changing it bumps no version and
-- notifies nobody, since the middleware reads it from the database, by the database's
-- clock, whenever a route asks for a fresh sign-in (`sessions.authenticated_within()`).
ALTER TABLE sessions.session ADD COLUMN authenticated_at timestamptz NULL;
-- The middleware's functions are SECURITY INVOKER: its role writes the column itself.
GRANT INSERT (authenticated_at), UPDATE (authenticated_at) ON sessions.session TO sessions_app;

ALTER TABLE sessions.event DROP CONSTRAINT event_kind_check;
ALTER TABLE sessions.event ADD CONSTRAINT event_kind_check CHECK (kind IN (
    'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged',
    'altered', 'token_reused', 'reauthenticated'));

-- The middleware's two writes, as in 20260101000006, setting authenticated_at at a sign-in.
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

CREATE OR REPLACE FUNCTION sessions.save_session(
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
             user_id = CASE WHEN bind_user THEN new_user_id ELSE s.user_id END,
             authenticated_at = CASE WHEN bind_user THEN now() ELSE s.authenticated_at END
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

-- The user proved who they are again (a password, a second factor): the session's
-- authenticated_at becomes now(), and a `reauthenticated` event names the actor. Only a
-- live session of the transaction's own tenant (`sessions.tenant`) that has a user;
-- returns whether one did. SECURITY DEFINER, owned by sessions_admin like the log
-- writers, because the app role may not write events itself: the tenant is checked here.
CREATE FUNCTION sessions.reauthenticate(session_id uuid)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Whether the session's user proved who they are within `max_age`, by the database's
-- clock; NULL for no live session of this tenant. SECURITY INVOKER: row-level security
-- applies.
CREATE FUNCTION sessions.authenticated_within(session_id uuid, max_age interval)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(s.authenticated_at > now() - max_age, false)
    FROM sessions.session AS s
   WHERE s.tenant_id = current_setting('sessions.tenant', true) AND s.id = session_id
     AND s.revoked_at IS NULL AND least(s.idle_expires_at, s.absolute_expires_at) > now()
$$;

REVOKE EXECUTE ON FUNCTION sessions.reauthenticate(uuid),
  sessions.authenticated_within(uuid, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.reauthenticate(uuid),
  sessions.authenticated_within(uuid, interval) TO sessions_app, sessions_admin;
-- reauthenticate() runs as sessions_admin, which alone may write events. A non-superuser
-- may only give a function to a role that can create in its schema: grant that for the
-- hand-over and take it back (as 20260101000003 does for the log writers).
GRANT CREATE ON SCHEMA sessions TO sessions_admin;
ALTER FUNCTION sessions.reauthenticate(uuid) OWNER TO sessions_admin;
REVOKE CREATE ON SCHEMA sessions FROM sessions_admin;

-- migrate:down
DROP FUNCTION sessions.authenticated_within(uuid, interval);
DROP FUNCTION sessions.reauthenticate(uuid);
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

CREATE OR REPLACE FUNCTION sessions.save_session(
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

DELETE FROM sessions.event WHERE kind = 'reauthenticated';
ALTER TABLE sessions.event DROP CONSTRAINT event_kind_check;
ALTER TABLE sessions.event ADD CONSTRAINT event_kind_check CHECK (kind IN (
    'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged',
    'altered', 'token_reused'));
REVOKE INSERT (authenticated_at), UPDATE (authenticated_at) ON sessions.session FROM sessions_app;
ALTER TABLE sessions.session DROP COLUMN authenticated_at;
