-- migrate:up
-- Tokens that name their session. A token issued from this release on is the session's
-- id (16 bytes, 22 base64url characters) followed by its 43-character secret; the
-- stored hash still covers the whole token, so the id part only routes: every
-- request-path statement knows the session it is about before it asks. On Citus, where
-- the sessions are distributed by id (docs/scaling.md), that is what sends each
-- statement to the one worker holding the session; on one server the token's unique
-- index finds the row as before. A token issued earlier (43 characters) names no
-- session: the same functions find it without a hint until it expires.
--
-- The functions below are the lookup, lock-mode lookup and creation of migrations 5, 7
-- and 11 with that hint (the creation: the new session's id, chosen by the app because
-- it is in the token). A hint that does not match the token's session finds nothing, as
-- a wrong token does. The previous signatures stay for app nodes of the previous
-- release during a rolling deploy.

-- The app chooses a new session's id (it is part of the token it hands out).
GRANT INSERT (id) ON sessions.session TO sessions_app;

CREATE FUNCTION sessions.lookup_session(
  tenant text,
  presented_hash bytea,
  touch_interval interval,
  rotate_interval interval,
  session_hint uuid
)
RETURNS TABLE (
  id uuid,
  tenant_id text,
  token_hash bytea,
  user_id text,
  data jsonb,
  version bigint,
  created_at timestamptz,
  last_seen_at timestamptz,
  idle_expires_at timestamptz,
  absolute_expires_at timestamptz,
  token_issued_at timestamptz,
  touch_due boolean,
  rotation_due boolean,
  ended text,
  revoked_reason text,
  ended_at timestamptz,
  in_grace boolean
)
-- STABLE as before: its two queries share the caller's snapshot (VOLATILE takes one per
-- query, measured ~30 µs more PostgreSQL CPU per uncached load). Setting the tenant is
-- no write; PARALLEL UNSAFE because set_config() is.
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The lock is taken only for a session the token really reaches: a hint alone (a public
-- id with a made-up secret) never holds another session's lock.
CREATE FUNCTION sessions.lock_session(
  tenant text,
  presented_hash bytea,
  lock_class integer,
  touch_interval interval,
  rotate_interval interval,
  restore_statement_timeout boolean,
  session_hint uuid
)
RETURNS TABLE (
  id uuid,
  tenant_id text,
  token_hash bytea,
  user_id text,
  data jsonb,
  version bigint,
  created_at timestamptz,
  last_seen_at timestamptz,
  idle_expires_at timestamptz,
  absolute_expires_at timestamptz,
  token_issued_at timestamptz,
  touch_due boolean,
  rotation_due boolean,
  ended text,
  revoked_reason text,
  ended_at timestamptz,
  in_grace boolean
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The row's times are read into variables and converted after the INSERT: a RETURNING
-- list of column references only, which Citus also accepts on a distributed table.
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
  relaxed boolean,
  new_id uuid
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
$$;

REVOKE EXECUTE ON FUNCTION
  sessions.lookup_session(text, bytea, interval, interval, uuid),
  sessions.lock_session(text, bytea, integer, interval, interval, boolean, uuid),
  sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval, boolean, uuid)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  sessions.lookup_session(text, bytea, interval, interval, uuid),
  sessions.lock_session(text, bytea, integer, interval, interval, boolean, uuid),
  sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval, boolean, uuid)
  TO sessions_app, sessions_admin;

-- migrate:down
DROP FUNCTION sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval, boolean, uuid);
DROP FUNCTION sessions.lock_session(text, bytea, integer, interval, interval, boolean, uuid);
DROP FUNCTION sessions.lookup_session(text, bytea, interval, interval, uuid);
REVOKE INSERT (id) ON sessions.session FROM sessions_app;
