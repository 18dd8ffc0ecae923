-- migrate:up
-- A user's sessions exported and erased (the right of access and the right to erasure):
-- IP addresses and user agents in session tables are personal data.
--
-- export_user() returns, as one JSON document, the user's sessions in a tenant (never a
-- token hash) and the events about them. erase_user() revokes and deletes the user's
-- sessions (every app node drops them at once: the triggers notify), then replaces the
-- user id in every event about them with a pseudonym (and the actor where it names the
-- user: the middleware's `user:<id>`) and clears the addresses and user agents there, and leaves one `erased` event per session under the pseudonym: the
-- reporting views keep counting them, and nothing names the person any more. Both run as
-- sessions_admin (SECURITY DEFINER) and only sessions_admin may call them: not the app.
ALTER TABLE sessions.event DROP CONSTRAINT event_kind_check;
ALTER TABLE sessions.event ADD CONSTRAINT event_kind_check CHECK (kind IN (
    'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged',
    'altered', 'token_reused', 'reauthenticated', 'erased'));

-- Erasure rewrites the identifying columns of past events, and nothing else of them.
GRANT UPDATE (user_id, actor, ip, user_agent, rotation_ip, rotation_user_agent)
  ON sessions.event TO sessions_admin;

CREATE FUNCTION sessions.export_user(tenant text, user_to_export text)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

CREATE FUNCTION sessions.erase_user(tenant text, user_to_erase text, pseudonym text DEFAULT NULL)
RETURNS TABLE (sessions_deleted integer, events_rewritten integer, pseudonym_used text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

REVOKE EXECUTE ON FUNCTION sessions.export_user(text, text),
  sessions.erase_user(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.export_user(text, text),
  sessions.erase_user(text, text, text) TO sessions_admin;
-- They run as sessions_admin; a non-superuser may only give a function to a role that
-- can create in its schema: grant that for the hand-over and take it back.
GRANT CREATE ON SCHEMA sessions TO sessions_admin;
ALTER FUNCTION sessions.export_user(text, text) OWNER TO sessions_admin;
ALTER FUNCTION sessions.erase_user(text, text, text) OWNER TO sessions_admin;
REVOKE CREATE ON SCHEMA sessions FROM sessions_admin;

-- migrate:down
DROP FUNCTION sessions.erase_user(text, text, text);
DROP FUNCTION sessions.export_user(text, text);
REVOKE UPDATE (user_id, actor, ip, user_agent, rotation_ip, rotation_user_agent)
  ON sessions.event FROM sessions_admin;
DELETE FROM sessions.event WHERE kind = 'erased';
ALTER TABLE sessions.event DROP CONSTRAINT event_kind_check;
ALTER TABLE sessions.event ADD CONSTRAINT event_kind_check CHECK (kind IN (
    'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged',
    'altered', 'token_reused', 'reauthenticated'));
