import test from 'ava';
import { type CommitFacts, planCommit } from '../../src/commit-plan.js';

/** A request that loaded a live session and did nothing with it. */
const loadedUntouched: CommitFacts = {
  loaded: true,
  stale: false,
  presented: true,
  destroyRequested: false,
  revokedSelf: false,
  sessionInUse: false,
  dataChanged: false,
  forcedSave: false,
  rotate: false,
  bindUser: false,
  touchDue: false,
  saveUninitialized: false,
};

/** A first visit: no token presented. */
const firstVisit: CommitFacts = { ...loadedUntouched, loaded: false, presented: false };

test('a loaded session nobody read is left alone, or touched when its expiry is due', (t) => {
  t.like(planCommit(loadedUntouched), { action: 'none', clearCookie: false });
  t.like(planCommit({ ...loadedUntouched, touchDue: true }), { action: 'touch' });
});

test('a read but unchanged session is not rewritten', (t) => {
  t.like(planCommit({ ...loadedUntouched, sessionInUse: true }), { action: 'none' });
  t.like(planCommit({ ...loadedUntouched, sessionInUse: true, touchDue: true }), {
    action: 'touch',
  });
});

test('a changed key, save() or a user binding saves; a new token rotates', (t) => {
  const inUse = { ...loadedUntouched, sessionInUse: true };
  t.like(planCommit({ ...inUse, dataChanged: true }), { action: 'save' });
  t.like(planCommit({ ...inUse, forcedSave: true }), { action: 'save' });
  t.like(planCommit({ ...inUse, bindUser: true }), { action: 'save' });
  t.like(planCommit({ ...inUse, rotate: true }), { action: 'rotate' });
  t.like(planCommit({ ...inUse, rotate: true, dataChanged: true }), { action: 'rotate' });
});

test('a first visit creates only when something was written, or with saveUninitialized', (t) => {
  t.like(planCommit(firstVisit), { action: 'none', clearCookie: false });
  t.like(planCommit({ ...firstVisit, sessionInUse: true }), { action: 'none' });
  t.like(planCommit({ ...firstVisit, sessionInUse: true, dataChanged: true }), {
    action: 'create',
    destroyFirst: false,
  });
  t.like(planCommit({ ...firstVisit, sessionInUse: true, saveUninitialized: true }), {
    action: 'create',
  });
});

test('a stale token gets its cookie cleared, and a write creates a fresh session', (t) => {
  const stale = { ...firstVisit, presented: true, stale: true };
  t.like(planCommit(stale), { action: 'none', clearCookie: true });
  t.like(planCommit({ ...stale, sessionInUse: true }), { action: 'none', clearCookie: true });
  t.like(planCommit({ ...stale, sessionInUse: true, dataChanged: true }), {
    action: 'create',
    clearCookie: false,
  });
});

test('destroy deletes the loaded row and clears the cookie', (t) => {
  t.like(planCommit({ ...loadedUntouched, destroyRequested: true }), {
    action: 'destroy',
    clearCookie: true,
  });
  // Destroying what was never live still clears the client's cookie, and writes nothing.
  t.like(planCommit({ ...firstVisit, presented: true, stale: true, destroyRequested: true }), {
    action: 'none',
    clearCookie: true,
  });
});

test('destroy then assign replaces the row; destroy then assign nothing just destroys', (t) => {
  const replaced = { ...loadedUntouched, destroyRequested: true, sessionInUse: true };
  t.like(planCommit({ ...replaced, dataChanged: true }), {
    action: 'create',
    destroyFirst: true,
  });
  t.like(planCommit(replaced), { action: 'destroy', clearCookie: true });
});

test('a session the request revoked itself is never written, and its cookie goes', (t) => {
  t.like(
    planCommit({ ...loadedUntouched, revokedSelf: true, sessionInUse: true, dataChanged: true }),
    { action: 'revoked', clearCookie: true },
  );
});
