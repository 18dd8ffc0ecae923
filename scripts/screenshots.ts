// `npm run screenshots`: the devices page of the demo at 390 px and at desktop width,
// written to docs/ for the README. Runs the demo on a throwaway database.
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createDemoApp } from '../examples/app.js';
import { createTestDatabase, stopTestServer } from '../src/testing/index.js';
import {
  backdateSessions,
  CHROMIUM_MISSING,
  captureDevicesScreenshots,
  chromiumInstalled,
  launchChromium,
} from './demo-browser.js';

const DOCS = fileURLToPath(new URL('../docs/', import.meta.url));

if (!chromiumInstalled()) {
  process.stderr.write(`screenshots: ${CHROMIUM_MISSING}\n`);
  process.exit(1);
}
const db = await createTestDatabase();
const admin = new pg.Pool({ connectionString: db.url, max: 2 });
const { app, middleware } = createDemoApp({ database: db.appUrl, gc: false }, { proxy: true });
const server = app.listen(0, '127.0.0.1');
await new Promise((resolve) => server.once('listening', resolve));
const browser = await launchChromium();
try {
  const files = await captureDevicesScreenshots({
    browser,
    baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    outDir: DOCS,
    backdate: (user) => backdateSessions(admin, user),
  });
  for (const file of files) process.stdout.write(`wrote ${file}\n`);
} finally {
  await browser.close();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await middleware.close();
  await admin.end();
  await db.drop();
  await stopTestServer();
}
