-- migrate:up
-- The triggers on sessions.session, all of them: the version bump, the event log and
-- the notifications. No code path can skip them, so every change is versioned, logged
-- and announced to every app node.
--
--   session_bump_version  BEFORE UPDATE, each row      bump_version()
--   session_log_insert    AFTER INSERT, each statement log_insert()   'created'
--   session_log_update    AFTER UPDATE, each statement log_update()   'rotated', 'user_bound',
--                                                      'revoked', 'updated', 'altered'; notify
--                                                      (or defer, see notify_deferred)
--   session_log_delete    AFTER DELETE, each statement log_delete()   'destroyed', 'expired',
--                                                      'purged'; notify
--
-- and one on sessions.previous_token:
--
--   previous_token_log_reuse  AFTER UPDATE, each statement  log_token_reuse()  'token_reused'
--                             (the session's revocation in the same statement notifies)
--
-- Every session write runs them, so they are written for speed: the statement-level
-- ones read each transition table once, set-based (a GC batch or a bulk revocation
-- costs one INSERT and a few NOTIFYs, not one per row), and spell out the rules of the
-- helper functions below instead of calling them: a function with its own search_path
-- is never inlined, and saves and restores the setting on every call.

-- The rules as functions, for queries (the triggers write their expressions out).
-- True when a row's content differs; activity (last_seen_at, idle_expires_at) and
-- bookkeeping (version, updated_at) are not content.
CREATE FUNCTION sessions.content_changed(old_row sessions.session, new_row sessions.session)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT (old_row.data, old_row.user_id, old_row.token_hash, old_row.revoked_at, old_row.revoked_reason,
          old_row.absolute_expires_at, old_row.ip, old_row.user_agent)
         IS DISTINCT FROM
         (new_row.data, new_row.user_id, new_row.token_hash, new_row.revoked_at, new_row.revoked_reason,
          new_row.absolute_expires_at, new_row.ip, new_row.user_agent)
$$;

-- Sorted names of the top-level keys whose value differs (added, removed or changed).
CREATE FUNCTION sessions.changed_keys(old_data jsonb, new_data jsonb)
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(array_agg(k ORDER BY k), '{}')
    FROM (SELECT jsonb_object_keys(old_data) UNION SELECT jsonb_object_keys(new_data)) AS keys(k)
   WHERE old_data -> k IS DISTINCT FROM new_data -> k
$$;

-- The changed columns that no other event kind reports (a revocation reports its own
-- reason; rotation, binding and data have kinds of their own), sorted: an operator's
-- UPDATE of the creation address or user agent, of the absolute expiry, of a
-- revocation's reason.
CREATE FUNCTION sessions.altered_columns(old_row sessions.session, new_row sessions.session)
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Who made a change, for the event log: the transaction's `sessions.actor` (the
-- middleware sets it), else the login role.
CREATE FUNCTION sessions.current_actor() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(nullif(current_setting('sessions.actor', true), ''), session_user::text) $$;

-- Sends the rows as few NOTIFY payloads as fit under NOTIFY's 8000-byte limit:
-- {"op": "update"|"delete", "s": [[tenant, id, old token hash hex, version], …]}.
-- Above 1000 rows in one statement, one {"op":"flush","tenant":…} per tenant instead.
CREATE FUNCTION sessions.notify_changes(op text, entries jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Deferred notification. PostgreSQL serialises every transaction that queued a NOTIFY
-- on one cluster-wide lock (PreCommit_Notify), held through its commit's WAL flush:
-- notifying writes lose group commit. So the middleware's ordinary data writes do not
-- notify inside their commit. Such a statement sets `sessions.defer_notify` to 'on'
-- (transaction-local, never for a connection); log_update then queues the entries of
-- rows whose only content change is `data` in `sessions.notify_pending`, a setting made
-- with is_local = false inside the transaction: a rollback (or a rolled-back savepoint)
-- takes it back, a commit keeps it for the next statement of the same message,
-- `COMMIT; SELECT sessions.notify_deferred()`. That transaction only notifies: it writes
-- no WAL before its commit record, so it never waits for a flush. The server has the
-- whole message, so a client that dies after sending it still notifies.
--
-- Everything else notifies inside its commit, deferral asked or not: rotation, user
-- binding, revocation, any other column, every delete, every statement that did not
-- ask (the CLI, the garbage collector, hand-written SQL). The request is consumed by
-- the statement that made it: later statements of the transaction notify as usual.
--
-- Sends the queued entries and clears the queue. Never raises for what it can catch:
-- it returns false (and warns) instead, so that a write that committed is never
-- reported as failed. An error at this transaction's own commit (a full notification
-- queue) can still reach the client after the write's COMMIT: the middleware counts it
-- as "committed, notification failed", and the entries stay queued on that connection
-- for its next flush.
CREATE FUNCTION sessions.notify_deferred() RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Version and updated_at are the database's: bumped on a content change, kept on a
-- touch or a no-op, never taken from the client.
CREATE FUNCTION sessions.bump_version() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The log writers are SECURITY DEFINER, owned by sessions_admin (below): the app
-- role cannot write events itself.
CREATE FUNCTION sessions.log_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, actor, ip, user_agent)
  SELECT n.tenant_id, n.id, n.user_id, 'created', n.version, sessions.current_actor(), n.ip, n.user_agent
    FROM new_rows n;
  RETURN NULL;
END
$$;

-- One pass over the transition tables. A row changed content exactly when
-- bump_version raised its version; one statement that changes several things of a row
-- writes one event per kind of change, all with the same version.
CREATE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
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
  -- Only a change of data alone may wait for notify_deferred (see there).
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

-- A deletion says how the session ended: 'destroyed' only for a live row (logout);
-- removing a row that had already ended is 'purged' (revoked earlier) or 'expired'
-- (past its expiry), whoever deletes it, inside gc_batch (reason 'gc') or not. So a
-- session has at most one ending event (revoked, expired or destroyed).
CREATE FUNCTION sessions.log_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
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

-- A rotated-away token presented after its grace period: the middleware marks it
-- (reused_*) and revokes the session in one statement; this logs both requests, the
-- one that rotated the token away and the one that presented it, never the token.
CREATE FUNCTION sessions.log_token_reuse() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

CREATE TRIGGER session_bump_version BEFORE UPDATE ON sessions.session
  FOR EACH ROW EXECUTE FUNCTION sessions.bump_version();
CREATE TRIGGER session_log_insert AFTER INSERT ON sessions.session
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_insert();
CREATE TRIGGER session_log_update AFTER UPDATE ON sessions.session
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_update();
CREATE TRIGGER session_log_delete AFTER DELETE ON sessions.session
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_delete();
CREATE TRIGGER previous_token_log_reuse AFTER UPDATE ON sessions.previous_token
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
  EXECUTE FUNCTION sessions.log_token_reuse();

-- New functions are executable by PUBLIC by default: not these.
REVOKE EXECUTE ON FUNCTION sessions.content_changed(sessions.session, sessions.session),
                           sessions.changed_keys(jsonb, jsonb),
                           sessions.altered_columns(sessions.session, sessions.session),
                           sessions.current_actor(),
                           sessions.notify_changes(text, jsonb),
                           sessions.notify_deferred(),
                           sessions.bump_version(),
                           sessions.log_insert(),
                           sessions.log_update(),
                           sessions.log_delete(),
                           sessions.log_token_reuse()
  FROM PUBLIC;

-- The log writers run as sessions_admin, which alone may write events. A non-superuser
-- may only give a function to a role that can create in its schema: grant that for
-- the hand-over and take it back.
GRANT CREATE ON SCHEMA sessions TO sessions_admin;
ALTER FUNCTION sessions.log_insert() OWNER TO sessions_admin;
ALTER FUNCTION sessions.log_update() OWNER TO sessions_admin;
ALTER FUNCTION sessions.log_delete() OWNER TO sessions_admin;
ALTER FUNCTION sessions.log_token_reuse() OWNER TO sessions_admin;
REVOKE CREATE ON SCHEMA sessions FROM sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.content_changed(sessions.session, sessions.session) TO sessions_app;
-- The middleware sends its deferred notifications as itself: pg_notify is open to every
-- role anyway, so this grants nothing new.
GRANT EXECUTE ON FUNCTION sessions.notify_deferred(), sessions.notify_changes(text, jsonb)
  TO sessions_app;
GRANT EXECUTE ON FUNCTION sessions.content_changed(sessions.session, sessions.session),
                          sessions.changed_keys(jsonb, jsonb),
                          sessions.altered_columns(sessions.session, sessions.session),
                          sessions.current_actor(),
                          sessions.notify_changes(text, jsonb),
                          sessions.notify_deferred()
  TO sessions_admin;

-- migrate:down
DROP TRIGGER previous_token_log_reuse ON sessions.previous_token;
DROP TRIGGER session_log_delete ON sessions.session;
DROP TRIGGER session_log_update ON sessions.session;
DROP TRIGGER session_log_insert ON sessions.session;
DROP TRIGGER session_bump_version ON sessions.session;
DROP FUNCTION sessions.log_token_reuse();
DROP FUNCTION sessions.log_delete();
DROP FUNCTION sessions.log_update();
DROP FUNCTION sessions.log_insert();
DROP FUNCTION sessions.bump_version();
DROP FUNCTION sessions.notify_deferred();
DROP FUNCTION sessions.notify_changes(text, jsonb);
DROP FUNCTION sessions.current_actor();
DROP FUNCTION sessions.altered_columns(sessions.session, sessions.session);
DROP FUNCTION sessions.changed_keys(jsonb, jsonb);
DROP FUNCTION sessions.content_changed(sessions.session, sessions.session);
