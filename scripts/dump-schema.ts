// Writes schema.sql: schema `sessions` after all migrations as SQL, every object with
// its definition, read from the catalogs of a fresh test database (embedded PostgreSQL
// unless PG_TEST_URL/PG_BIN_DIR; 15 and 18 give the same text).
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
