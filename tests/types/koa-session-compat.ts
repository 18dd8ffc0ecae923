// Compile-time test (npm run typecheck): pg-sessions' ctx.session goes wherever koa-session
// 7's published types expect its Session, so a member or an overload that pg-sessions
// lacks fails tsc. koa-session 7 declares its Session in dist/esm/session.d.ts without
// exporting it from the package, so the declaration file is named by its path.
//
// Its class has a `#private` field, which makes it nominal: no other object is ever
// assignable to the class itself. What code can rely on is its public surface, which is
// what is checked here. The one deliberate exception (README, Compatibility with
// koa-session): `maxAge` reads `number | 'session'`, which koa-session 7 also returns at
// run time but declares as `number`.

import Koa from 'koa';
import type { Session as KoaSession } from '../../node_modules/koa-session/dist/esm/session.js';
import { type Session, sessions } from '../../src/index.js';

/** koa-session 7's `Session`, every public member. */
type KoaSessionSurface = Pick<KoaSession, keyof KoaSession>;

/** The members pg-sessions matches exactly: all of them but `maxAge`. */
type KoaSessionExceptMaxAge = Omit<KoaSessionSurface, 'maxAge'>;

/** A function written for koa-session, as passport-style code is. */
function regenerateThenSave(session: KoaSessionExceptMaxAge, done: (error?: Error) => void): void {
  session.regenerate((regenerated) => {
    if (regenerated) return done(regenerated);
    session.save(done);
  });
}

async function promiseForms(session: KoaSessionExceptMaxAge): Promise<void> {
  await session.save();
  await session.regenerate();
  await session.manuallyCommit();
  await session.commit();
  await session.commit({ save: true });
  session.commit({ regenerate: true }, () => {});
}

const app = new Koa();
app.use(sessions({ database: 'postgres://localhost/app' }));
app.use(async (ctx) => {
  const session = ctx.session;
  if (!session) return;
  // Wherever koa-session's Session is expected, pg-sessions' is accepted.
  const asKoa: KoaSessionExceptMaxAge = session;
  regenerateThenSave(session, () => {});
  await promiseForms(session);

  // The overloads: a promise without a callback, undefined with one.
  const saved: Promise<void> = session.save();
  const savedWithCallback: undefined = session.save(() => {});
  const regenerated: Promise<void> = session.regenerate();
  const regeneratedWithCallback: undefined = session.regenerate((error?: Error) => void error);
  const committed: Promise<void> = session.commit({ save: true });
  const committedWithCallback: undefined = session.commit(() => {});
  const manual: Promise<void> = session.manuallyCommit();

  // koa-session's public fields.
  const isNew: boolean = session.isNew;
  const requireSave: boolean = session._requireSave;
  session._requireSave = true;
  const expire: number | undefined = session._expire;
  const externalKey: string | undefined = session.externalKey;
  const data: Record<string, unknown> = session.toJSON();
  const length: number = session.length;
  const populated: boolean = session.populated;

  // The exception: maxAge also reads 'session' (koa-session declares number).
  const maxAge: number | 'session' = session.maxAge;
  session.maxAge = 60_000;
  session.maxAge = 'session';
  // @ts-expect-error maxAge may be 'session', which koa-session's `number` leaves out
  const onlyNumber: number = session.maxAge;

  const typed: Session = session;
  void [asKoa, saved, savedWithCallback, regenerated, regeneratedWithCallback, committed];
  void [committedWithCallback, manual, isNew, requireSave, expire, externalKey, data, length];
  void [populated, maxAge, onlyNumber, typed];
});
