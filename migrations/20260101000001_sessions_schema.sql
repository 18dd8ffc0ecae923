-- migrate:up
CREATE SCHEMA IF NOT EXISTS sessions;

-- One row per live session. Every key carries the tenant, so the table can be
-- distributed by tenant_id (Citus) without a redesign.
CREATE TABLE sessions.session (
  tenant_id text NOT NULL CHECK (tenant_id <> '' AND length(tenant_id) <= 200),
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  token_hash bytea NOT NULL CHECK (octet_length(token_hash) = 32),
  user_id text NULL,
  data jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(data) = 'object'),
  version bigint NOT NULL DEFAULT 1,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  idle_expires_at timestamptz NOT NULL,
  absolute_expires_at timestamptz NOT NULL,
  expires_at timestamptz GENERATED ALWAYS AS (LEAST(idle_expires_at, absolute_expires_at)) STORED,
  revoked_at timestamptz NULL,
  revoked_reason text NULL,
  ip inet NULL,
  user_agent text NULL CHECK (length(user_agent) <= 1024),
  CONSTRAINT session_pkey PRIMARY KEY (tenant_id, id),
  CONSTRAINT session_token_hash_key UNIQUE (tenant_id, token_hash),
  CONSTRAINT session_revocation_consistent CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX session_user_idx ON sessions.session (tenant_id, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX session_expires_at_idx ON sessions.session (expires_at);
CREATE INDEX session_revoked_at_idx ON sessions.session (revoked_at) WHERE revoked_at IS NOT NULL;

-- Append-only audit log, written only by the triggers below. Never holds data values.
CREATE TABLE sessions.event (
  tenant_id text NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  occurred_at timestamptz NOT NULL DEFAULT now(),
  session_id uuid NOT NULL,
  user_id text NULL,
  kind text NOT NULL CHECK (kind IN ('created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged')),
  version bigint NULL,
  changed_keys text[] NULL,
  reason text NULL,
  actor text NOT NULL,
  ip inet NULL,
  user_agent text NULL,
  CONSTRAINT event_pkey PRIMARY KEY (tenant_id, id)
);
CREATE INDEX event_occurred_at_brin ON sessions.event USING brin (occurred_at);
CREATE INDEX event_session_idx ON sessions.event (tenant_id, session_id);
CREATE INDEX event_user_idx ON sessions.event (tenant_id, user_id, occurred_at) WHERE user_id IS NOT NULL;
CREATE INDEX event_kind_idx ON sessions.event (kind, occurred_at);

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

CREATE TRIGGER session_bump_version BEFORE UPDATE ON sessions.session
  FOR EACH ROW EXECUTE FUNCTION sessions.bump_version();

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

CREATE FUNCTION sessions.current_actor() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(nullif(current_setting('sessions.actor', true), ''), session_user::text) $$;

-- Statement-level, set-based: a GC batch or a bulk revocation costs one INSERT and a
-- few NOTIFYs, not one per row. SECURITY DEFINER: the app role cannot write events.
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

CREATE FUNCTION sessions.log_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
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

CREATE FUNCTION sessions.log_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  by_gc boolean := current_setting('sessions.delete_reason', true) = 'gc';
  entries jsonb;
BEGIN
  INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, reason, actor)
  SELECT o.tenant_id, o.id, o.user_id,
         CASE WHEN NOT by_gc THEN 'destroyed' WHEN o.revoked_at IS NULL THEN 'expired' ELSE 'purged' END,
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

CREATE TRIGGER session_log_insert AFTER INSERT ON sessions.session
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_insert();
CREATE TRIGGER session_log_update AFTER UPDATE ON sessions.session
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_update();
CREATE TRIGGER session_log_delete AFTER DELETE ON sessions.session
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sessions.log_delete();

-- Garbage collection: deletes at most batch_size expired or revoked rows, skipping
-- rows that requests hold locked, so it never waits on traffic and two collectors
-- never take the same row. Call until it returns less than batch_size, each call in
-- its own transaction.
CREATE FUNCTION sessions.gc_batch(batch_size integer DEFAULT 500)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleted integer;
BEGIN
  IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
    RAISE EXCEPTION 'sessions.gc_batch: batch_size must be between 1 and 10000, got %', batch_size
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM set_config('sessions.delete_reason', 'gc', true);
  WITH doomed AS (
    SELECT tenant_id, id FROM sessions.session
     WHERE expires_at <= now() OR revoked_at IS NOT NULL
     LIMIT batch_size
     FOR UPDATE SKIP LOCKED
  )
  DELETE FROM sessions.session s USING doomed d
   WHERE s.tenant_id = d.tenant_id AND s.id = d.id;
  GET DIAGNOSTICS deleted = ROW_COUNT;
  PERFORM set_config('sessions.delete_reason', '', true);
  RETURN deleted;
END
$$;

-- migrate:down
DROP FUNCTION sessions.gc_batch(integer);
DROP FUNCTION sessions.content_changed(sessions.session, sessions.session);
DROP TABLE sessions.session;
DROP FUNCTION sessions.log_insert();
DROP FUNCTION sessions.log_update();
DROP FUNCTION sessions.log_delete();
DROP FUNCTION sessions.current_actor();
DROP FUNCTION sessions.notify_changes(text, jsonb);
DROP FUNCTION sessions.bump_version();
DROP FUNCTION sessions.changed_keys(jsonb, jsonb);
DROP TABLE sessions.event;
