-- migrate:up
-- Every content change leaves an event, also the ones no middleware operation makes: an
-- operator's UPDATE of the creation address or user agent, of the absolute expiry, of a
-- revocation's reason, or one that undoes a revocation. Those bump the version (they
-- are content) but logged nothing; now they log 'altered', naming the columns.
ALTER TABLE sessions.event DROP CONSTRAINT event_kind_check;
ALTER TABLE sessions.event ADD CONSTRAINT event_kind_check CHECK (kind IN (
  'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged',
  'altered'));

-- The changed columns that no other event kind reports (a revocation reports its own
-- reason; rotation, binding and data have kinds of their own), sorted.
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
REVOKE EXECUTE ON FUNCTION sessions.altered_columns(sessions.session, sessions.session) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.altered_columns(sessions.session, sessions.session) TO sessions_admin;

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

-- migrate:down
CREATE OR REPLACE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  entries jsonb;
BEGIN
  WITH changed AS (
    SELECT o AS old_row, n AS new_row
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

DROP FUNCTION sessions.altered_columns(sessions.session, sessions.session);
-- The old constraint cannot hold them: rolling back drops these events.
DELETE FROM sessions.event WHERE kind = 'altered';
ALTER TABLE sessions.event DROP CONSTRAINT event_kind_check;
ALTER TABLE sessions.event ADD CONSTRAINT event_kind_check CHECK (kind IN (
  'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged'));
