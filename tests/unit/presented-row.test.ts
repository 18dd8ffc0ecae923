import test from 'ava';
import { type PresentedSessionRow, toPresentedRow } from '../../src/store/records.js';

const now = new Date('2026-05-01T12:00:00Z');
const row: PresentedSessionRow = {
  id: '00000000-0000-0000-0000-000000000001',
  tenant_id: 't',
  token_hash: Buffer.alloc(32, 7),
  user_id: 'ada',
  data: { cart: ['tea'] },
  version: '3',
  created_at: now,
  last_seen_at: now,
  idle_expires_at: new Date(now.getTime() + 60_000),
  absolute_expires_at: new Date(now.getTime() + 3_600_000),
  touch_due: false,
  token_issued_at: now,
  rotation_due: false,
  in_grace: null,
  ended: null,
  revoked_reason: null,
  ended_at: new Date(now.getTime() + 60_000),
};

test('a live row is the live record, with nothing ended', (t) => {
  const presented = toPresentedRow(row);
  t.is(presented?.ended, undefined);
  t.like(presented?.live, { id: row.id, userId: 'ada', version: 3 });
});

test('a revoked row carries its stored reason and time, and no live record', (t) => {
  const revokedAt = new Date(now.getTime() + 5_000);
  const presented = toPresentedRow({
    ...row,
    ended: 'revoked',
    revoked_reason: 'max_sessions',
    ended_at: revokedAt,
  });
  t.is(presented?.live, undefined);
  t.deepEqual(presented?.ended, {
    reason: 'revoked',
    revokedReason: 'max_sessions',
    endedAt: revokedAt,
    id: row.id,
  });
});

test('an expired row says expired, with its expiry as the time and no revocation reason', (t) => {
  const presented = toPresentedRow({ ...row, ended: 'expired' });
  t.is(presented?.live, undefined);
  t.deepEqual(presented?.ended, { reason: 'expired', endedAt: row.ended_at, id: row.id });
  t.deepEqual(presented && 'data' in presented ? presented.data : undefined, { cart: ['tea'] });
});

test('a live row found by a previous token is marked: in its grace, or reused past it', (t) => {
  t.is(toPresentedRow({ ...row, in_grace: true })?.live?.rotatedAway, 'grace');
  t.is(toPresentedRow({ ...row, in_grace: false })?.live?.rotatedAway, 'reused');
  t.is(toPresentedRow(row)?.live?.rotatedAway, undefined);
});
