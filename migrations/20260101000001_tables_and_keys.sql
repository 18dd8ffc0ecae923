-- migrate:up
-- The tables and their keys. Privileges, row-level security, triggers and the
-- functions that maintain the tables come in the next migrations.
CREATE SCHEMA IF NOT EXISTS sessions;

-- One row per live session. Every key carries the tenant, so the table can be
-- distributed by tenant_id (Citus) without a redesign. The token itself is never
-- stored, only its SHA-256.
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
  -- When the current token was issued (creation or the last rotation): periodic
  -- rotation (option rotateInterval) measures the token's age from it.
  token_issued_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT session_pkey PRIMARY KEY (tenant_id, id),
  CONSTRAINT session_token_hash_key UNIQUE (tenant_id, token_hash),
  CONSTRAINT session_revocation_consistent CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
-- A user's devices; garbage collection by expiry and by revocation.
CREATE INDEX session_user_idx ON sessions.session (tenant_id, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX session_expires_at_idx ON sessions.session (expires_at);
CREATE INDEX session_revoked_at_idx ON sessions.session (revoked_at) WHERE revoked_at IS NOT NULL;

-- The tokens a rotation replaced (regenerate, login, periodic rotation), by SHA-256
-- like the current one, kept as long as their session and deleted with it. Until
-- grace_expires_at a rotated-away token still reaches its session, so requests in
-- flight finish; presented later, it is evidence of a copied token: the session is
-- revoked (reason and event 'token_reused'), and reused_* record the request that
-- presented it. rotation_* record the request that rotated it away.
CREATE TABLE sessions.previous_token (
  tenant_id text NOT NULL,
  token_hash bytea NOT NULL CHECK (octet_length(token_hash) = 32),
  session_id uuid NOT NULL,
  rotated_at timestamptz NOT NULL DEFAULT now(),
  grace_expires_at timestamptz NOT NULL,
  rotation_ip inet NULL,
  rotation_user_agent text NULL CHECK (length(rotation_user_agent) <= 1024),
  reused_at timestamptz NULL,
  reused_ip inet NULL,
  reused_user_agent text NULL CHECK (length(reused_user_agent) <= 1024),
  CONSTRAINT previous_token_pkey PRIMARY KEY (tenant_id, token_hash),
  CONSTRAINT previous_token_session_fkey FOREIGN KEY (tenant_id, session_id)
    REFERENCES sessions.session (tenant_id, id) ON DELETE CASCADE
);
-- The cascade from a session's deletion.
CREATE INDEX previous_token_session_idx ON sessions.previous_token (tenant_id, session_id);

-- Append-only audit log, written only by the triggers (20260101000003). Never holds
-- data values. 'altered' is a hand-written change to a column no other kind reports;
-- 'token_reused' a rotated-away token presented after its grace period: ip and
-- user_agent are the presenting request's, rotation_ip and rotation_user_agent those of
-- the request that rotated the token away.
CREATE TABLE sessions.event (
  tenant_id text NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  occurred_at timestamptz NOT NULL DEFAULT now(),
  session_id uuid NOT NULL,
  user_id text NULL,
  kind text NOT NULL CHECK (kind IN (
    'created', 'updated', 'rotated', 'user_bound', 'revoked', 'expired', 'destroyed', 'purged',
    'altered', 'token_reused')),
  version bigint NULL,
  changed_keys text[] NULL,
  reason text NULL,
  actor text NOT NULL,
  ip inet NULL,
  user_agent text NULL,
  rotation_ip inet NULL,
  rotation_user_agent text NULL,
  CONSTRAINT event_pkey PRIMARY KEY (tenant_id, id)
);
-- The log is written in time order, so BRIN indexes stay a few pages even at tens of
-- millions of events: occurred_at serves cross-tenant time ranges, the UTC day serves
-- the reporting views' `WHERE day >= …` (they group by that expression).
CREATE INDEX event_occurred_at_brin ON sessions.event USING brin (occurred_at);
CREATE INDEX event_day_brin ON sessions.event USING brin (((occurred_at AT TIME ZONE 'UTC')::date));
-- A session's history, a tenant's timeline, a user's history.
CREATE INDEX event_session_idx ON sessions.event (tenant_id, session_id);
CREATE INDEX event_tenant_occurred_at_idx ON sessions.event (tenant_id, occurred_at);
CREATE INDEX event_user_idx ON sessions.event (tenant_id, user_id, occurred_at) WHERE user_id IS NOT NULL;
-- Revocations are a small share of the log and the only kind a report looks up by
-- user: a partial index, not one on (kind, occurred_at) that every event would pay for.
CREATE INDEX event_revoked_idx ON sessions.event (tenant_id, user_id, occurred_at)
  WHERE kind = 'revoked';

-- migrate:down
-- The schema stays: dbmate's sessions.schema_migrations lives in it.
DROP TABLE sessions.event;
DROP TABLE sessions.previous_token;
DROP TABLE sessions.session;
