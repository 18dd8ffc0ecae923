// The audit triggers as Citus runs them. The migrations' triggers are statement-level
// with transition tables, which a shard cannot read ("could not find named tuplestore",
// tests/citus/platform.test.ts): on a distributed table each becomes a row-level
// trigger that writes the same events and notifications for its one row, on the worker
// that holds it (the event shard is co-located, on the same worker).
//
// A statement that reaches several shards from the coordinator (a user's revocation,
// the batched touches) runs on each worker as a query on a shard, where Citus refuses
// a further distributed statement unless allowed: the triggers allow it for their own
// INSERT into the event log, whose co-located shard is on the same worker, so the
// insert runs there, in the same transaction (local execution).
//
// Two differences, both because the trigger runs on a worker:
// - nothing is deferred to notify_deferred(): that runs on the coordinator, which never
//   sees a worker's settings. Each notification goes out in the worker's own commit
//   (the notify lock it takes is that worker's, not one for the whole cluster);
// - the garbage collector's reason comes from its own worker-side batch
//   (gc_batch below), which sets it where the trigger runs.

/** Each statement is sent alone: Citus propagates DDL by the message it came in. */
export const ROW_TRIGGER_FUNCTIONS: readonly string[] = [
  `CREATE OR REPLACE FUNCTION sessions.citus_log_insert() RETURNS trigger
   LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
   SET citus.allow_nested_distributed_execution = on AS $$
   BEGIN
     INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, actor, ip, user_agent)
     VALUES (NEW.tenant_id, NEW.id, NEW.user_id, 'created', NEW.version, sessions.current_actor(),
             NEW.ip, NEW.user_agent);
     -- As log_insert: only the middleware's creations (create_session asks) are announced.
     IF coalesce(current_setting('sessions.defer_notify', true) = 'on', false) THEN
       PERFORM sessions.notify_changes('update', jsonb_build_array(jsonb_build_array(
         NEW.tenant_id, NEW.id, encode(NEW.token_hash, 'hex'), NEW.version, 'created', NEW.user_id,
         NULL, (extract(epoch FROM now()) * 1000)::bigint)));
       PERFORM set_config('sessions.defer_notify', '', true);
     END IF;
     RETURN NULL;
   END $$`,
  `CREATE OR REPLACE FUNCTION sessions.citus_log_update() RETURNS trigger
   LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
   SET citus.allow_nested_distributed_execution = on AS $$
   DECLARE
     rotated boolean := OLD.token_hash IS DISTINCT FROM NEW.token_hash;
     bound boolean := OLD.user_id IS DISTINCT FROM NEW.user_id;
     revoked boolean := OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL;
     changed_keys text[];
     altered text[];
   BEGIN
     IF NEW.version = OLD.version THEN
       RETURN NULL;
     END IF;
     IF OLD.data IS DISTINCT FROM NEW.data THEN
       SELECT coalesce(array_agg(k ORDER BY k), '{}') INTO changed_keys
         FROM (SELECT jsonb_object_keys(OLD.data) UNION SELECT jsonb_object_keys(NEW.data)) AS keys(k)
        WHERE OLD.data -> k IS DISTINCT FROM NEW.data -> k;
     END IF;
     altered := array_remove(ARRAY[
       CASE WHEN OLD.absolute_expires_at IS DISTINCT FROM NEW.absolute_expires_at
            THEN 'absolute_expires_at' END,
       CASE WHEN OLD.ip IS DISTINCT FROM NEW.ip THEN 'ip' END,
       CASE WHEN OLD.revoked_at IS NOT NULL AND OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
            THEN 'revoked_at' END,
       CASE WHEN OLD.revoked_reason IS DISTINCT FROM NEW.revoked_reason AND NOT revoked
            THEN 'revoked_reason' END,
       CASE WHEN OLD.user_agent IS DISTINCT FROM NEW.user_agent THEN 'user_agent' END
     ], NULL);
     INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, changed_keys, reason, actor)
     SELECT NEW.tenant_id, NEW.id, NEW.user_id, e.kind, NEW.version, e.keys, e.reason, sessions.current_actor()
       FROM (VALUES ('rotated', NULL::text[], NULL::text, rotated),
                    ('user_bound', NULL, NULL, bound),
                    ('revoked', NULL, NEW.revoked_reason, revoked),
                    ('updated', changed_keys, NULL, changed_keys IS NOT NULL),
                    ('altered', altered, NULL, cardinality(altered) > 0)) AS e(kind, keys, reason, happened)
      WHERE e.happened;
     PERFORM sessions.notify_changes('update', jsonb_build_array(jsonb_build_array(
       NEW.tenant_id, NEW.id, encode(OLD.token_hash, 'hex'), NEW.version,
       CASE WHEN revoked THEN 'revoked' WHEN rotated THEN 'rotated' WHEN bound THEN 'bound' ELSE 'updated' END,
       NEW.user_id, CASE WHEN revoked THEN NEW.revoked_reason END,
       (extract(epoch FROM now()) * 1000)::bigint)));
     PERFORM set_config('sessions.defer_notify', '', true);
     RETURN NULL;
   END $$`,
  `CREATE OR REPLACE FUNCTION sessions.citus_log_delete() RETURNS trigger
   LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
   SET citus.allow_nested_distributed_execution = on AS $$
   DECLARE
     by_gc boolean := current_setting('sessions.delete_reason', true) = 'gc';
     kind text := CASE WHEN OLD.revoked_at IS NOT NULL THEN 'purged'
                       WHEN OLD.expires_at <= now() THEN 'expired'
                       ELSE 'destroyed' END;
   BEGIN
     INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, reason, actor)
     VALUES (OLD.tenant_id, OLD.id, OLD.user_id, kind, OLD.version, CASE WHEN by_gc THEN 'gc' END,
             sessions.current_actor());
     PERFORM sessions.notify_changes('delete', jsonb_build_array(jsonb_build_array(
       OLD.tenant_id, OLD.id, encode(OLD.token_hash, 'hex'), OLD.version, kind, OLD.user_id,
       CASE WHEN by_gc THEN 'gc' END, (extract(epoch FROM now()) * 1000)::bigint)));
     RETURN NULL;
   END $$`,
  `CREATE OR REPLACE FUNCTION sessions.citus_log_token_reuse() RETURNS trigger
   LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
   SET citus.allow_nested_distributed_execution = on AS $$
   DECLARE owner text;
   BEGIN
     IF OLD.reused_at IS NULL AND NEW.reused_at IS NOT NULL THEN
       -- Read first, then a plain VALUES insert: an INSERT … SELECT would run as a
       -- distributed INSERT … SELECT, which draws the event id from the sequence itself.
       SELECT s.user_id INTO owner FROM sessions.session AS s
        WHERE s.tenant_id = NEW.tenant_id AND s.id = NEW.session_id;
       INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, actor, ip, user_agent,
                                   rotation_ip, rotation_user_agent)
       VALUES (NEW.tenant_id, NEW.session_id, owner, 'token_reused', sessions.current_actor(),
               NEW.reused_ip, NEW.reused_user_agent, NEW.rotation_ip, NEW.rotation_user_agent);
     END IF;
     RETURN NULL;
   END $$`,
  // A new session id on the same shard as `near`: a request transaction that already
  // ran on `near`'s worker (lock mode's load) and must create a session stays on that
  // worker. On two, it would commit in two phases, which PostgreSQL refuses after the
  // triggers' NOTIFY. About one draw in 32 (the default shard count) matches.
  `CREATE OR REPLACE FUNCTION sessions.citus_colocated_id(near uuid) RETURNS uuid
   LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
   DECLARE
     target bigint := get_shard_id_for_distribution_column('sessions.session', near);
     candidate uuid;
   BEGIN
     FOR attempt IN 1..100000 LOOP
       candidate := gen_random_uuid();
       IF get_shard_id_for_distribution_column('sessions.session', candidate) = target THEN
         RETURN candidate;
       END IF;
     END LOOP;
     RAISE EXCEPTION 'sessions.citus_colocated_id: no id on the shard of % in 100000 draws', near;
   END $$`,
  // One batch of garbage collection on the shard `shard` of sessions.session, run on the
  // worker that holds it (gc_batch sends it there): the shard is a plain table
  // there, so the rows are found and deleted as gc_batch does on one server, and the
  // reason reaches the delete trigger.
  `CREATE OR REPLACE FUNCTION sessions.citus_gc_shard(shard regclass, batch_size integer, actor text)
   RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
   DECLARE deleted integer;
   BEGIN
     -- Only a shard of sessions.session: the caller names the table.
     IF NOT EXISTS (SELECT FROM pg_dist_shard AS d
                     WHERE d.logicalrelid = 'sessions.session'::regclass
                       AND shard_name(d.logicalrelid, d.shardid) = shard::text) THEN
       RAISE EXCEPTION 'sessions.citus_gc_shard: % is not a shard of sessions.session', shard
         USING ERRCODE = 'invalid_parameter_value';
     END IF;
     PERFORM set_config('sessions.delete_reason', 'gc', true), set_config('sessions.actor', actor, true);
     EXECUTE format(
       'WITH revoked AS (SELECT ctid FROM %1$s WHERE revoked_at IS NOT NULL
                          LIMIT $1 FOR UPDATE SKIP LOCKED),
             expired AS (SELECT ctid FROM %1$s WHERE expires_at <= now() AND revoked_at IS NULL
                          LIMIT $1 FOR UPDATE SKIP LOCKED)
        DELETE FROM %1$s WHERE ctid = ANY (ARRAY(
          SELECT ctid FROM revoked UNION ALL SELECT ctid FROM expired LIMIT $1))', shard) USING batch_size;
     GET DIAGNOSTICS deleted = ROW_COUNT;
     PERFORM set_config('sessions.delete_reason', '', true);
     RETURN deleted;
   END $$`,
  // gc_batch on Citus, same signature (the collector and `pg-sessions gc` call it
  // unchanged): one batch on every shard, each on its worker, in parallel.
  // SECURITY INVOKER: Citus connects to the workers as the current user, and
  // sessions_admin may not log in. The per-shard batch it calls is SECURITY DEFINER.
  `CREATE OR REPLACE FUNCTION sessions.gc_batch(batch_size integer DEFAULT 500)
   RETURNS integer LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
   DECLARE
     deleted integer;
     failed text;
   BEGIN
     IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
       RAISE EXCEPTION 'sessions.gc_batch: batch_size must be between 1 and 10000, got %', batch_size
         USING ERRCODE = 'invalid_parameter_value';
     END IF;
     SELECT coalesce(sum(r.result::integer) FILTER (WHERE r.success), 0),
            min(r.result) FILTER (WHERE NOT r.success)
       INTO deleted, failed
       FROM run_command_on_shards('sessions.session',
              'SELECT sessions.citus_gc_shard(''%s'', ' || batch_size || ', '
              || quote_literal(coalesce(nullif(current_setting('sessions.actor', true), ''), session_user::text))
              || ')') AS r;
     IF failed IS NOT NULL THEN
       RAISE EXCEPTION 'sessions.gc_batch: a shard failed: %', failed;
     END IF;
     RETURN deleted;
   END $$`,
];

/** The migrations' triggers and the row-level function each becomes on Citus. */
export const REPLACED_TRIGGERS: readonly {
  readonly table: string;
  readonly name: string;
  readonly timing: string;
  readonly fn: string;
}[] = [
  {
    table: 'sessions.session',
    name: 'session_log_insert',
    timing: 'AFTER INSERT',
    fn: 'citus_log_insert',
  },
  {
    table: 'sessions.session',
    name: 'session_log_update',
    timing: 'AFTER UPDATE',
    fn: 'citus_log_update',
  },
  {
    table: 'sessions.session',
    name: 'session_log_delete',
    timing: 'AFTER DELETE',
    fn: 'citus_log_delete',
  },
  {
    table: 'sessions.previous_token',
    name: 'previous_token_log_reuse',
    timing: 'AFTER UPDATE',
    fn: 'citus_log_token_reuse',
  },
];
