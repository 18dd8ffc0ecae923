-- migrate:up
-- Reporting views for the auditor. security_invoker: the reader's own privileges and
-- policies apply, so they never reveal token_hash or data. Live = not revoked, not expired.
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

GRANT SELECT ON sessions.active_sessions_per_tenant, sessions.sessions_per_user TO sessions_auditor;

-- migrate:down
DROP VIEW sessions.sessions_per_user;
DROP VIEW sessions.active_sessions_per_tenant;
