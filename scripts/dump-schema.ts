// Writes schema.sql: the catalog listing of schema `sessions` after all migrations,
// taken on a fresh test database (embedded PostgreSQL unless PG_TEST_URL/PG_BIN_DIR).
import { writeFile } from 'node:fs/promises';
import { createTestDatabase, stopTestServer } from '../src/testing/index.js';
import { schemaSnapshot } from '../src/testing/schema-snapshot.js';

const db = await createTestDatabase();
try {
  await writeFile(new URL('../schema.sql', import.meta.url), await schemaSnapshot(db.url));
  process.stdout.write('wrote schema.sql\n');
} finally {
  await db.drop();
  await stopTestServer();
}
