-- migrate:up
-- Lock mode's load in one statement planned once per connection: the session's
-- transaction-scoped advisory lock, then its lookup. PL/pgSQL and VOLATILE, so the
-- lookup takes its snapshot after the lock is granted and sees what the previous holder
-- committed (the two used to be separate statements of one message for that reason).
-- `restore_statement_timeout`: the call ran with a longer statement_timeout for the
-- lock wait (the middleware's setting); the statements after it get the value saved in
-- `sessions.statement_timeout` back. An advisory lock takes no transaction id and writes
-- no WAL, so a lock-mode request that writes nothing commits without a WAL flush. A
-- rotation that commits while this waits moves the presented token to previous_token:
-- the lookup still finds the session there. SECURITY INVOKER: row-level security applies.
CREATE FUNCTION sessions.lock_session(
  tenant text,
  presented_hash bytea,
  lock_class integer,
  touch_interval interval,
  rotate_interval interval,
  restore_statement_timeout boolean
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
$$;

REVOKE EXECUTE ON FUNCTION
  sessions.lock_session(text, bytea, integer, interval, interval, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  sessions.lock_session(text, bytea, integer, interval, interval, boolean)
  TO sessions_app, sessions_admin;

-- migrate:down
DROP FUNCTION sessions.lock_session(text, bytea, integer, interval, interval, boolean);
