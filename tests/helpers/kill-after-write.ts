// A writer that dies (SIGKILL) right after sending the middleware's write message,
// before any answer: the deferred-notification test proves the server still notifies.
// Env: DATABASE_URL (the app role), SESSION_ID (a live session of tenant 'default').
import pg from 'pg';
import { SessionEngine } from '../../src/engine.js';
import { resolveOptions } from '../../src/options/resolve.js';
import type { SessionRecord } from '../../src/store/records.js';

const engine = new SessionEngine(
  resolveOptions({ database: process.env.DATABASE_URL, cache: false, gc: false }),
);
await engine.start();

type Query = (this: pg.Client, ...args: unknown[]) => unknown;
const query = pg.Client.prototype.query as unknown as Query;
(pg.Client.prototype as unknown as { query: Query }).query = function (this: pg.Client, ...args) {
  const result = query.apply(this, args);
  const first = args[0] as string | { text?: string } | undefined;
  const text = typeof first === 'string' ? first : first?.text;
  if (text?.includes('notify_deferred')) {
    // The message has been handed to the socket (an idle client submits at once).
    const stream = (
      this as unknown as {
        connection: { stream: NodeJS.WritableStream & { writableLength: number } };
      }
    ).connection.stream;
    const die = () => process.kill(process.pid, 'SIGKILL');
    if (stream.writableLength === 0) die();
    else stream.once('drain', die);
  }
  return result;
};

// A version it cannot have: the save runs its general update, as after a concurrent write.
await engine.store('default').save({
  loaded: { id: String(process.env.SESSION_ID), version: 0 } as SessionRecord,
  patch: { v: 'after' },
  removed: [],
  actor: 'test:killed',
});
// Not reached: the process is gone before the answer.
process.exit(3);
