-- migrate:up
-- save_session() returns the times it wrote computed after its UPDATE, not in the
-- UPDATE's RETURNING: Citus refuses a distributed UPDATE whose RETURNING calls a
-- function that is not IMMUTABLE (extract() on a timestamptz is STABLE), and the
-- function runs whole on a worker once `pg-sessions citus distribute` has run. The
-- same rows, the same plan on one server (a CTE that only returns its rows). And its
-- first pass compares the row's version, never a constant the planner could fold to
-- false (Citus refuses a delegated statement that names no shard).

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

-- migrate:down
-- save_session() as migration 12 left it.

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
$function$;
