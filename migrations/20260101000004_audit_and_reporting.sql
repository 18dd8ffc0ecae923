-- migrate:up
-- Maintenance and reading: garbage collection, event retention and cross-tenant
-- revocation (definer functions owned by sessions_admin), and the auditor's reporting
-- views over the sessions and the event log.

-- Garbage collection: deletes at most batch_size expired or revoked rows, skipping
-- rows that requests hold locked, so it never waits on traffic and two collectors
-- never take the same row. Call until it returns less than batch_size, each call in
-- its own transaction. The delete trigger logs 'expired' or 'purged' with reason 'gc';
-- the session's previous tokens go with it (ON DELETE CASCADE). Each part is an index
-- range scan from the oldest end (revoked rows through the partial
-- session_revoked_at_idx, then expired ones through session_expires_at_idx): one OR over
-- both would be a sequential scan that reads past every live row first.
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
  -- The rows are deleted by their ctid (a locked row keeps it until this transaction
  -- ends): a join on the key could hash the whole table to find a few hundred rows.
  WITH revoked AS (
    SELECT ctid FROM sessions.session
     WHERE revoked_at IS NOT NULL
     ORDER BY revoked_at
     LIMIT batch_size
     FOR UPDATE SKIP LOCKED
  ), expired AS (
    SELECT ctid FROM sessions.session
     WHERE expires_at <= now() AND revoked_at IS NULL
     ORDER BY expires_at
     LIMIT batch_size
     FOR UPDATE SKIP LOCKED
  )
  DELETE FROM sessions.session
   WHERE ctid = ANY (ARRAY(
     -- Read lazily: expired rows are locked only as far as the batch still has room.
     SELECT ctid FROM revoked
     UNION ALL
     SELECT ctid FROM expired
     LIMIT batch_size));
  GET DIAGNOSTICS deleted = ROW_COUNT;
  PERFORM set_config('sessions.delete_reason', '', true);
  RETURN deleted;
END
$$;

-- Autovacuum for a table that garbage collection empties in bulk and touches rewrite
-- (a touch moves expires_at, which is indexed, so it is never a HOT update): vacuum at
-- 5 % dead rows, not the default 20 % that lets a 1M-row table carry 200,000 dead rows
-- and their index entries; analyse at 2 %. docs/scaling.md says when to go further.
ALTER TABLE sessions.session SET (autovacuum_vacuum_scale_factor = 0.05,
                                  autovacuum_analyze_scale_factor = 0.02);

-- Retention: deletes at most batch_size events older than older_than (by the
-- database's clock). Call until it returns less than batch_size, each call in its
-- own transaction (`pg-sessions prune-events` does), so no call holds locks for long.
-- Only this function deletes events; nobody may update them. No FOR UPDATE: that needs
-- UPDATE on the log, which nobody has; concurrent calls take turns on a
-- transaction-level advisory lock instead, so neither stops early on rows the other is
-- deleting.
CREATE FUNCTION sessions.prune_events(older_than interval, batch_size integer DEFAULT 5000)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleted integer;
BEGIN
  IF older_than IS NULL OR older_than <= interval '0' THEN
    RAISE EXCEPTION 'sessions.prune_events: older_than must be a positive interval, got %',
      coalesce(older_than::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF batch_size IS NULL OR batch_size < 1 OR batch_size > 100000 THEN
    RAISE EXCEPTION 'sessions.prune_events: batch_size must be between 1 and 100000, got %',
      coalesce(batch_size::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- 'pgse' and 3 (gc holds 'pgse' and 2).
  PERFORM pg_advisory_xact_lock(1885827941, 3);
  WITH doomed AS (
    SELECT tenant_id, id FROM sessions.event
     WHERE occurred_at < now() - older_than
     LIMIT batch_size
  )
  DELETE FROM sessions.event e USING doomed d
   WHERE e.tenant_id = d.tenant_id AND e.id = d.id;
  GET DIAGNOSTICS deleted = ROW_COUNT;
  RETURN deleted;
END
$$;

-- Cross-tenant revocation for operators (the CLI's `revoke`): the only way to revoke
-- without naming a tenant, validated, live sessions only. EXECUTE can be granted to a
-- support role that has no other privilege on the tables. The caller sets
-- `sessions.actor` for the event log; the triggers notify every app node.
CREATE FUNCTION sessions.check_revocation_reason(reason text) RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF reason IS NULL OR btrim(reason) = '' OR length(reason) > 200 THEN
    RAISE EXCEPTION 'sessions: a revocation needs a reason of 1 to 200 characters'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$$;

CREATE FUNCTION sessions.revoke_session(id uuid, reason text, tenant text DEFAULT NULL)
RETURNS TABLE (tenant_id text, session_id uuid) LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  IF revoke_session.id IS NULL THEN
    RAISE EXCEPTION 'sessions.revoke_session: id must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM sessions.check_revocation_reason(revoke_session.reason);
  RETURN QUERY
    UPDATE sessions.session s
       SET revoked_at = now(), revoked_reason = revoke_session.reason
     WHERE s.id = revoke_session.id
       AND (revoke_session.tenant IS NULL OR s.tenant_id = revoke_session.tenant)
       AND s.revoked_at IS NULL AND s.expires_at > now()
    RETURNING s.tenant_id, s.id;
END
$$;

CREATE FUNCTION sessions.revoke_user(user_id text, reason text, tenant text DEFAULT NULL)
RETURNS TABLE (tenant_id text, session_id uuid) LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  IF revoke_user.user_id IS NULL OR revoke_user.user_id = '' THEN
    RAISE EXCEPTION 'sessions.revoke_user: user_id must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM sessions.check_revocation_reason(revoke_user.reason);
  RETURN QUERY
    UPDATE sessions.session s
       SET revoked_at = now(), revoked_reason = revoke_user.reason
     WHERE s.user_id = revoke_user.user_id
       AND (revoke_user.tenant IS NULL OR s.tenant_id = revoke_user.tenant)
       AND s.revoked_at IS NULL AND s.expires_at > now()
    RETURNING s.tenant_id, s.id;
END
$$;

-- The network an address belongs to, for "sessions from many places": the /24 of an
-- IPv4 address (also when it arrives IPv4-mapped, ::ffff:a.b.c.d, as Node reports
-- IPv4 clients on a dual-stack socket), the /48 of an IPv6 address. SQL and without
-- SET so that the planner inlines it.
CREATE FUNCTION sessions.network_prefix(ip inet) RETURNS cidr LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT CASE
    WHEN pg_catalog.family(ip) = 4 THEN pg_catalog.network(pg_catalog.set_masklen(ip, 24))
    WHEN ip OPERATOR(pg_catalog.<<) inet '::ffff:0.0.0.0/96' THEN
      pg_catalog.network(pg_catalog.set_masklen(
        inet '0.0.0.0' OPERATOR(pg_catalog.+) (ip OPERATOR(pg_catalog.-) inet '::ffff:0.0.0.0'), 24))
    ELSE pg_catalog.network(pg_catalog.set_masklen(ip, 48))
  END
$$;

-- Reporting views. security_invoker: the reader's own privileges and policies apply,
-- and none of them names token_hash or data. Live = not revoked, not expired. Days and
-- hours are UTC.

-- Live sessions per tenant, and per user.
CREATE VIEW sessions.active_sessions_per_tenant WITH (security_invoker = true) AS
SELECT tenant_id,
       count(*) AS active_sessions,
       count(DISTINCT user_id) AS users,
       count(*) FILTER (WHERE user_id IS NULL) AS anonymous_sessions,
       min(created_at) AS oldest_created_at,
       max(created_at) AS newest_created_at
  FROM sessions.session
 WHERE revoked_at IS NULL AND expires_at > now()
 GROUP BY tenant_id;

CREATE VIEW sessions.sessions_per_user WITH (security_invoker = true) AS
SELECT tenant_id,
       user_id,
       count(*) AS active_sessions,
       count(DISTINCT ip) AS distinct_ips,
       max(last_seen_at) AS last_seen_at,
       min(created_at) AS first_created_at
  FROM sessions.session
 WHERE user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > now()
 GROUP BY tenant_id, user_id;

-- Live sessions of users, one row per device: who is logged in from where.
CREATE VIEW sessions.user_devices WITH (security_invoker = true) AS
SELECT tenant_id,
       user_id,
       id AS session_id,
       created_at,
       last_seen_at,
       expires_at,
       ip,
       sessions.network_prefix(ip) AS network,
       user_agent,
       version
  FROM sessions.session
 WHERE user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > now();

-- Per UTC day and tenant, from the event log: sessions created, and sessions ended,
-- split by how (revoked, expired, destroyed = logout). A 'purged' event is the
-- removal of a session that had already ended (revoked), so it is not an ending.
CREATE VIEW sessions.daily_session_counts WITH (security_invoker = true) AS
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
       tenant_id,
       count(*) FILTER (WHERE kind = 'created') AS created,
       count(*) FILTER (WHERE kind <> 'created') AS ended,
       count(*) FILTER (WHERE kind = 'revoked') AS revoked,
       count(*) FILTER (WHERE kind = 'expired') AS expired,
       count(*) FILTER (WHERE kind = 'destroyed') AS destroyed
  FROM sessions.event
 WHERE kind IN ('created', 'revoked', 'expired', 'destroyed')
 GROUP BY 1, 2;

-- Concurrent sessions per UTC hour and tenant, replayed from the event log: a
-- session counts from its 'created' event until its ending event (revoked, expired,
-- destroyed). Every hour from the tenant's first event to the current hour has a row.
-- An ending whose 'created' event was pruned is ignored, so retention never drives
-- the count below the sessions created within the retained log.
CREATE VIEW sessions.peak_sessions_per_hour WITH (security_invoker = true) AS
WITH changes AS (
  SELECT e.tenant_id, e.occurred_at, CASE WHEN e.kind = 'created' THEN 1 ELSE -1 END AS delta
    FROM sessions.event e
   WHERE e.kind = 'created'
      OR (e.kind IN ('revoked', 'expired', 'destroyed')
          AND EXISTS (SELECT FROM sessions.event c
                       WHERE c.tenant_id = e.tenant_id AND c.session_id = e.session_id
                         AND c.kind = 'created'))
), instants AS (
  -- Changes at the same instant are applied together.
  SELECT tenant_id, occurred_at, sum(delta) AS delta,
         count(*) FILTER (WHERE delta > 0) AS created,
         count(*) FILTER (WHERE delta < 0) AS ended
    FROM changes
   GROUP BY tenant_id, occurred_at
), levels AS (
  SELECT tenant_id, occurred_at, created, ended,
         sum(delta) OVER (PARTITION BY tenant_id ORDER BY occurred_at) AS level
    FROM instants
), busy_hours AS (
  SELECT tenant_id, date_trunc('hour', occurred_at, 'UTC') AS hour,
         max(level) AS peak,
         (array_agg(level ORDER BY occurred_at DESC))[1] AS closing,
         sum(created) AS created,
         sum(ended) AS ended
    FROM levels
   GROUP BY 1, 2
), hours AS (
  SELECT b.tenant_id, h.hour
    FROM (SELECT tenant_id, min(hour) AS first_hour, max(hour) AS last_hour
            FROM busy_hours GROUP BY tenant_id) b
   CROSS JOIN LATERAL generate_series(
           b.first_hour, greatest(b.last_hour, date_trunc('hour', now(), 'UTC')), interval '1 hour'
         ) AS h(hour)
), filled AS (
  -- run numbers an hour with changes and the quiet hours after it alike.
  SELECT h.tenant_id, h.hour, bh.peak, bh.closing,
         coalesce(bh.created, 0) AS created, coalesce(bh.ended, 0) AS ended,
         count(bh.closing) OVER (PARTITION BY h.tenant_id ORDER BY h.hour) AS run
    FROM hours h
    LEFT JOIN busy_hours bh ON bh.tenant_id = h.tenant_id AND bh.hour = h.hour
), closing AS (
  -- The level at the end of each hour: its own closing level, or the last one before.
  SELECT tenant_id, hour, peak, created, ended,
         max(closing) OVER (PARTITION BY tenant_id, run) AS level_at_end
    FROM filled
), opening AS (
  SELECT tenant_id, hour, peak, created, ended,
         coalesce(lag(level_at_end) OVER (PARTITION BY tenant_id ORDER BY hour), 0) AS at_start
    FROM closing
)
SELECT hour,
       tenant_id,
       at_start::bigint AS sessions_at_start,
       greatest(peak, at_start)::bigint AS peak_sessions,
       created::bigint,
       ended::bigint
  FROM opening;

-- Suspicious patterns. The thresholds are fixed here; docs/reporting.md shows the
-- queries to use other ones.

-- Users with more than 5 live sessions right now.
CREATE VIEW sessions.users_with_many_sessions WITH (security_invoker = true) AS
SELECT tenant_id,
       user_id,
       count(*) AS live_sessions,
       count(DISTINCT ip) AS distinct_ips,
       count(DISTINCT sessions.network_prefix(ip)) AS distinct_networks,
       min(created_at) AS oldest_created_at,
       max(last_seen_at) AS last_seen_at
  FROM sessions.session
 WHERE user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > now()
 GROUP BY tenant_id, user_id
HAVING count(*) > 5;

-- Users with 3 or more sessions revoked on one UTC day, with the reasons and who revoked.
CREATE VIEW sessions.users_with_many_revocations WITH (security_invoker = true) AS
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
       tenant_id,
       user_id,
       count(*) AS revocations,
       array_agg(DISTINCT reason ORDER BY reason) AS reasons,
       array_agg(DISTINCT actor ORDER BY actor) AS actors
  FROM sessions.event
 WHERE kind = 'revoked' AND user_id IS NOT NULL
 GROUP BY 1, 2, 3
HAVING count(*) >= 3;

-- Users who logged in on one UTC day from 4 or more networks (/24 IPv4, /48 IPv6):
-- a session counts for the user it was bound to (at creation or by a later login),
-- on that day, with the address it was created from.
CREATE VIEW sessions.users_with_many_networks WITH (security_invoker = true) AS
WITH logins AS (
  SELECT b.tenant_id, b.user_id, b.session_id, b.occurred_at, sessions.network_prefix(c.ip) AS network
    FROM sessions.event b
    JOIN sessions.event c
      ON c.tenant_id = b.tenant_id AND c.session_id = b.session_id AND c.kind = 'created'
   WHERE b.kind IN ('created', 'user_bound') AND b.user_id IS NOT NULL AND c.ip IS NOT NULL
)
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
       tenant_id,
       user_id,
       count(DISTINCT session_id) AS sessions,
       count(DISTINCT network) AS networks,
       array_agg(DISTINCT network ORDER BY network)::text[] AS network_list
  FROM logins
 GROUP BY 1, 2, 3
HAVING count(DISTINCT network) >= 4;

-- New functions are executable by PUBLIC by default: not these.
REVOKE EXECUTE ON FUNCTION sessions.gc_batch(integer),
                           sessions.prune_events(interval, integer),
                           sessions.check_revocation_reason(text),
                           sessions.revoke_session(uuid, text, text),
                           sessions.revoke_user(text, text, text),
                           sessions.network_prefix(inet)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sessions.gc_batch(integer) TO sessions_app, sessions_admin;
-- Hand the definer functions to sessions_admin (see 20260101000003 for why CREATE).
GRANT CREATE ON SCHEMA sessions TO sessions_admin;
ALTER FUNCTION sessions.gc_batch(integer) OWNER TO sessions_admin;
ALTER FUNCTION sessions.prune_events(interval, integer) OWNER TO sessions_admin;
ALTER FUNCTION sessions.revoke_session(uuid, text, text) OWNER TO sessions_admin;
ALTER FUNCTION sessions.revoke_user(text, text, text) OWNER TO sessions_admin;
REVOKE CREATE ON SCHEMA sessions FROM sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.check_revocation_reason(text) TO sessions_admin;
GRANT EXECUTE ON FUNCTION sessions.network_prefix(inet) TO sessions_auditor, sessions_admin;
GRANT SELECT ON sessions.active_sessions_per_tenant,
                sessions.sessions_per_user,
                sessions.user_devices,
                sessions.daily_session_counts,
                sessions.peak_sessions_per_hour,
                sessions.users_with_many_sessions,
                sessions.users_with_many_revocations,
                sessions.users_with_many_networks
  TO sessions_auditor;

-- migrate:down
DROP VIEW sessions.users_with_many_networks;
DROP VIEW sessions.users_with_many_revocations;
DROP VIEW sessions.users_with_many_sessions;
DROP VIEW sessions.peak_sessions_per_hour;
DROP VIEW sessions.daily_session_counts;
DROP VIEW sessions.user_devices;
DROP VIEW sessions.sessions_per_user;
DROP VIEW sessions.active_sessions_per_tenant;
DROP FUNCTION sessions.network_prefix(inet);
DROP FUNCTION sessions.revoke_user(text, text, text);
DROP FUNCTION sessions.revoke_session(uuid, text, text);
DROP FUNCTION sessions.check_revocation_reason(text);
DROP FUNCTION sessions.prune_events(interval, integer);
DROP FUNCTION sessions.gc_batch(integer);
ALTER TABLE sessions.session RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor);
