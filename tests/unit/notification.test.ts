import test from 'ava';
import { parseNotification } from '../../src/cache/notification.js';

test('an update payload lists every session with its version', (t) => {
  t.deepEqual(parseNotification('{"op":"update","s":[["t1","id1","ab",3],["t2","id2","cd",9]]}'), {
    op: 'update',
    sessions: [
      { tenantId: 't1', id: 'id1', tokenHashHex: 'ab', version: 3 },
      { tenantId: 't2', id: 'id2', tokenHashHex: 'cd', version: 9 },
    ],
  });
});

test('delete and flush payloads parse', (t) => {
  t.like(parseNotification('{"op":"delete","s":[["t","i","h",1]]}'), { op: 'delete' });
  t.deepEqual(parseNotification('{"op":"flush","tenant":"t"}'), { op: 'flush', tenantId: 't' });
});

for (const payload of [
  undefined,
  '',
  'not json',
  'null',
  '[]',
  '{"op":"update"}',
  '{"op":"update","s":[["t","i","h"]]}',
  '{"op":"update","s":[["t","i","h","3"]]}',
  '{"op":"update","s":[[1,"i","h",3]]}',
  '{"op":"flush"}',
  '{"op":"truncate","s":[]}',
]) {
  test(`a malformed payload is ignored, never trusted: ${String(payload)}`, (t) => {
    t.is(parseNotification(payload), undefined);
  });
}
