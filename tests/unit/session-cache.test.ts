import test from 'ava';
import { SessionCache } from '../../src/cache/session-cache.js';
import type { SessionRecord } from '../../src/store/records.js';

const hash = Buffer.alloc(32, 7);
function record(version: number, tenantId = 't'): SessionRecord {
  const now = new Date();
  return {
    id: '00000000-0000-0000-0000-000000000001',
    tenantId,
    tokenHash: hash,
    userId: null,
    data: { v: version },
    version,
    createdAt: now,
    lastSeenAt: now,
    idleExpiresAt: new Date(now.getTime() + 60_000),
    absoluteExpiresAt: new Date(now.getTime() + 60_000),
    touchDue: false,
    tokenIssuedAt: now,
    rotationDue: false,
  };
}

test('a load begun before a clear cannot fill the cache afterwards (epoch)', (t) => {
  const cache = new SessionCache({ maxEntries: 10, maxBytes: 1 << 20 });
  const epoch = cache.epoch;
  cache.clear();
  cache.set(record(1), epoch);
  t.is(cache.get('t', hash), undefined);
  cache.set(record(1), cache.epoch);
  t.is(cache.get('t', hash)?.version, 1);
});

test('a notification evicts an older version and keeps an equal or newer one', (t) => {
  const cache = new SessionCache({ maxEntries: 10, maxBytes: 1 << 20 });
  cache.set(record(2), cache.epoch);
  t.false(cache.invalidate('t', hash.toString('hex'), 2, false));
  t.true(cache.invalidate('t', hash.toString('hex'), 3, false));
  // A load that read version 2 before the notification of 3 arrived must not cache it.
  cache.set(record(2), cache.epoch);
  t.is(cache.get('t', hash), undefined);
  cache.set(record(3), cache.epoch);
  t.is(cache.get('t', hash)?.version, 3);
});

test('a deletion is remembered: no version of that token is cached again', (t) => {
  const cache = new SessionCache({ maxEntries: 10, maxBytes: 1 << 20 });
  cache.invalidate('t', hash.toString('hex'), 0, true);
  cache.set(record(99), cache.epoch);
  t.is(cache.get('t', hash), undefined);
  t.is(cache.announcedVersion('t', hash), Number.POSITIVE_INFINITY);
});

test('tenants are separate keys, and a tenant flush drops only its own', (t) => {
  const cache = new SessionCache({ maxEntries: 10, maxBytes: 1 << 20 });
  cache.set(record(1, 'a'), cache.epoch);
  cache.set(record(1, 'b'), cache.epoch);
  t.is(cache.invalidateTenant('a'), 1);
  t.is(cache.get('a', hash), undefined);
  t.is(cache.get('b', hash)?.tenantId, 'b');
});

test('a session this process ended leaves the cache, and a load that read it before cannot bring it back', (t) => {
  const cache = new SessionCache({ maxEntries: 10, maxBytes: 1 << 20 });
  const other = Buffer.alloc(32, 8);
  cache.set(record(4), cache.epoch);
  cache.set({ ...record(1), tokenHash: other }, cache.epoch);
  cache.forgetEnded('t', [{ id: record(4).id, tokenHash: hash }]);
  t.is(cache.get('t', hash), undefined);
  cache.set(record(9), cache.epoch);
  t.is(cache.get('t', hash), undefined, 'an ended session is never cached again');
  t.is(cache.get('t', other)?.version, 1, 'other sessions stay');
});
