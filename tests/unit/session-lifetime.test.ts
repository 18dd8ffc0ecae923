// A request's session objects must die young. The request that owns a session refers
// back to it (owner -> request -> ctx.session), and the session's internals once sat in
// a WeakMap keyed by the session: V8's young-generation collector keeps such an entry's
// value alive, so every request's whole object graph was promoted and left to the slow
// old-generation collector (5x the GC time, half the throughput of a cached read).
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import test from 'ava';
import { Session, type SessionOwner } from '../../src/session.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void;

function oldSpaceBytes(): number {
  const space = getHeapSpaceStatistics().find((entry) => entry.space_name === 'old_space');
  if (!space) throw new Error('V8 reports no old_space');
  return space.space_used_size;
}

/** One request's worth: a session whose owner reaches it again, and some request state. */
function serveOneRequest(): void {
  const request: { session?: Session; state: number[] } = { state: new Array(256).fill(1) };
  const owner: SessionOwner = {
    configuredMaxAge: 86_400_000,
    expiresAt: undefined,
    commit: async () => {},
    externalKey: () => (request.session ? 'key' : undefined),
  };
  request.session = new Session(new Map(), true, { user: 'u', visits: 1 }, owner);
}

test('a request that owns its session leaves nothing for the old generation', (t) => {
  gc();
  const before = oldSpaceBytes();
  const requests = 2_000;
  for (let i = 0; i < requests; i++) {
    serveOneRequest();
    if (i % 100 === 0) gc({ type: 'minor' });
  }
  gc({ type: 'minor' });
  gc({ type: 'minor' });
  const grown = oldSpaceBytes() - before;
  // Promoted, the requests would hold 2,000 x (2 KiB of state + the session): over 4 MiB.
  t.true(grown < 1024 * 1024, `old space grew by ${grown} bytes over ${requests} requests`);
});
