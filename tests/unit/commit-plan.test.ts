import test from 'ava';
import { type CommitFacts, planCommit } from '../../src/request/commit-plan.js';

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
  rolling: false,
  renew: false,
  renewDue: false,
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

test('every write sends the key again (the cookie expiry slides); nothing else does by default', (t) => {
  const inUse = { ...loadedUntouched, sessionInUse: true };
  t.like(planCommit({ ...inUse, dataChanged: true }), { action: 'save', sendCookie: true });
  t.like(planCommit({ ...inUse, rotate: true }), { action: 'rotate', sendCookie: true });
  t.like(planCommit({ ...firstVisit, sessionInUse: true, dataChanged: true }), {
    action: 'create',
    sendCookie: true,
  });
  t.like(planCommit(inUse), { action: 'none', sendCookie: false });
  t.like(planCommit({ ...inUse, touchDue: true }), { action: 'touch', sendCookie: false });
  t.like(planCommit({ ...loadedUntouched, destroyRequested: true }), { sendCookie: false });
});

test('a first visit assigned an object creates (its keys are changes against an empty baseline)', (t) => {
  t.like(planCommit({ ...firstVisit, sessionInUse: true, dataChanged: true }), {
    action: 'create',
    destroyFirst: false,
  });
});

test('session = null always expires the cookie, even when no token was presented', (t) => {
  t.like(planCommit({ ...firstVisit, destroyRequested: true }), {
    action: 'none',
    clearCookie: true,
  });
});

test('rolling re-sends the key of a session in use without a statement; not of an unread or new one', (t) => {
  const rolling = { ...loadedUntouched, rolling: true };
  t.like(planCommit({ ...rolling, sessionInUse: true }), { action: 'none', sendCookie: true });
  t.like(planCommit({ ...rolling, sessionInUse: true, touchDue: true }), {
    action: 'touch',
    sendCookie: true,
  });
  t.like(planCommit(rolling), { action: 'none', sendCookie: false });
  t.like(planCommit({ ...firstVisit, rolling: true, sessionInUse: true }), {
    action: 'none',
    sendCookie: false,
  });
});

test('renew saves and re-sends the key in the last half-life; a renewing touch re-sends it too', (t) => {
  const renew = { ...loadedUntouched, renew: true, sessionInUse: true };
  t.like(planCommit({ ...renew, renewDue: true }), { action: 'save', sendCookie: true });
  t.like(planCommit(renew), { action: 'none', sendCookie: false });
  t.like(planCommit({ ...renew, touchDue: true }), { action: 'touch', sendCookie: true });
  t.like(planCommit({ ...loadedUntouched, renew: true, touchDue: true }), {
    action: 'touch',
    sendCookie: true,
  });
});
