import type pg from 'pg';

/**
 * Checks a client out of `pool` with an 'error' listener for as long as it is held.
 * A pool listens for errors of its idle clients only: a server that dies while a
 * client is checked out but between queries (a request transaction awaiting its
 * handler, GC between batches, a ROLLBACK after a failed statement) would otherwise
 * emit an unhandled 'error' and end the process. The failed query rejects anyway; the
 * pool drops the client when it comes back unqueryable. The listener leaves with
 * `release()`, so clients of a pool the application owns are left as they were.
 */
export async function checkout(pool: pg.Pool): Promise<pg.PoolClient> {
  const client = await pool.connect();
  client.on('error', ignoreError);
  // pg-pool gives every checkout a release function of its own: wrapping this one is
  // undone by the next checkout.
  const release = client.release;
  client.release = (error?: Error | boolean) => {
    client.off('error', ignoreError);
    return release.call(client, error);
  };
  return client;
}

function ignoreError(): void {}
