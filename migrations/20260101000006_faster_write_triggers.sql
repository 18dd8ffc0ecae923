-- migrate:up
-- Cheaper write triggers, same events and notifications. Every session write runs
-- them, and measured with pgbench (one-row UPDATEs of session data, 8 clients,
-- fsync on) they took half of its time: calls to SQL helper functions that carry their
-- own search_path (so PostgreSQL never inlines them and saves and restores settings
-- on each call), five scans of the transition tables, and the batching loop around
-- a single notification.
CREATE OR REPLACE FUNCTION sessions.bump_version() RETURNS trigger LANGUAGE plpgsql
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

-- One pass over the transition tables instead of five, with the helpers' expressions
-- written out (sessions.content_changed, changed_keys, altered_columns and
-- current_actor keep their definitions for anyone who queries with them). A row
-- changed content exactly when bump_version raised its version.
CREATE OR REPLACE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  actor text := coalesce(nullif(current_setting('sessions.actor', true), ''), session_user::text);
  entries jsonb;
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
    INTO entries FROM changed;
  IF entries IS NOT NULL THEN
    PERFORM sessions.notify_changes('update', entries);
  END IF;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION sessions.notify_changes(op text, entries jsonb)
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

-- migrate:down
CREATE OR REPLACE FUNCTION sessions.bump_version() RETURNS trigger LANGUAGE plpgsql
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
  IF sessions.content_changed(OLD, NEW) THEN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
  ELSE
    NEW.version := OLD.version;
    NEW.updated_at := OLD.updated_at;
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  entries jsonb;
BEGIN
  WITH changed AS (
    SELECT o AS old_row, n AS new_row, sessions.altered_columns(o, n) AS altered
      FROM old_rows o JOIN new_rows n ON n.tenant_id = o.tenant_id AND n.id = o.id
     WHERE sessions.content_changed(o, n)
  ), events AS (
    SELECT (new_row).tenant_id, (new_row).id AS session_id, (new_row).user_id, 'rotated' AS kind,
           (new_row).version, NULL::text[] AS changed_keys, NULL::text AS reason
      FROM changed WHERE (old_row).token_hash IS DISTINCT FROM (new_row).token_hash
    UNION ALL
    SELECT (new_row).tenant_id, (new_row).id, (new_row).user_id, 'user_bound', (new_row).version, NULL, NULL
      FROM changed WHERE (old_row).user_id IS DISTINCT FROM (new_row).user_id
    UNION ALL
    SELECT (new_row).tenant_id, (new_row).id, (new_row).user_id, 'revoked', (new_row).version, NULL,
           (new_row).revoked_reason
      FROM changed WHERE (old_row).revoked_at IS NULL AND (new_row).revoked_at IS NOT NULL
    UNION ALL
    SELECT (new_row).tenant_id, (new_row).id, (new_row).user_id, 'updated', (new_row).version,
           sessions.changed_keys((old_row).data, (new_row).data), NULL
      FROM changed WHERE (old_row).data IS DISTINCT FROM (new_row).data
    UNION ALL
    SELECT (new_row).tenant_id, (new_row).id, (new_row).user_id, 'altered', (new_row).version,
           altered, NULL
      FROM changed WHERE cardinality(altered) > 0
  )
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, changed_keys, reason, actor)
  SELECT tenant_id, session_id, user_id, kind, version, changed_keys, reason, sessions.current_actor()
    FROM events;

  SELECT jsonb_agg(jsonb_build_array(o.tenant_id, o.id, encode(o.token_hash, 'hex'), n.version))
    INTO entries
    FROM old_rows o JOIN new_rows n ON n.tenant_id = o.tenant_id AND n.id = o.id
   WHERE sessions.content_changed(o, n);
  IF entries IS NOT NULL THEN
    PERFORM sessions.notify_changes('update', entries);
  END IF;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION sessions.notify_changes(op text, entries jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  entry jsonb;
  batch text := '';
  entry_text text;
  tenant text;
BEGIN
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
