import type { AddressInfo } from 'node:net';
import test from 'ava';
import type pg from 'pg';
import { createDemoApp } from '../examples/app.js';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let baseUrl: string;
let close: () => Promise<void>;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  const { app, middleware } = createDemoApp({ database: db.appUrl, touchInterval: 0 });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await middleware.close();
  };
});

test.after.always(async () => {
  await close?.();
  await admin?.end();
  await db?.drop();
});

async function formPost(browser: Browser, path: string, fields: Record<string, string> = {}) {
  const response = await fetch(`${baseUrl}${path}`, {
    method: 'POST',
    redirect: 'manual',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      cookie: [...browser.cookies].map(([name, value]) => `${name}=${value}`).join('; '),
    },
    body: new URLSearchParams(fields).toString(),
  });
  for (const line of response.headers.getSetCookie()) {
    const [pair = ''] = line.split(';');
    const [name = '', value = ''] = pair.split('=');
    if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) browser.cookies.delete(name);
    else browser.cookies.set(name, value);
  }
  return response.status;
}

test.serial('the demo: log in, count, fill a cart, see and revoke devices, log out', async (t) => {
  const laptop = new Browser(baseUrl);
  const phone = new Browser(baseUrl);
  t.is(await formPost(laptop, '/login', { user: 'ada' }), 302);
  t.is(await formPost(phone, '/login', { user: 'ada' }), 302);
  t.is(await formPost(laptop, '/counter'), 302);
  t.is(await formPost(laptop, '/counter'), 302);
  t.is(await formPost(laptop, '/cart', { item: 'tea' }), 302);
  const home = (await laptop.get('/')).body as string;
  t.regex(home, /Signed in as <b>ada<\/b>/);
  t.regex(home, /Count: 2/);
  t.regex(home, /<li>tea<\/li>/);

  const devices = (await laptop.get('/devices')).body as string;
  const ids = [...devices.matchAll(/\/devices\/([0-9a-f-]{36})\/revoke/g)].map((match) => match[1]);
  t.is(ids.length, 2);
  const phoneId = ids.find((id) => !devices.includes(`${id} (this one)`))!;
  t.is(await formPost(laptop, `/devices/${phoneId}/revoke`), 302);
  t.regex(
    (await phone.get('/')).body as string,
    /Not signed in/,
    'the revoked phone is logged out',
  );
  t.regex((await laptop.get('/')).body as string, /Signed in as <b>ada<\/b>/);

  t.is(await formPost(laptop, '/logout'), 302);
  t.regex((await laptop.get('/')).body as string, /Not signed in/);
});

test.serial('the demo keeps at most five sessions per user, revoking the oldest', async (t) => {
  const browsers = Array.from({ length: 6 }, () => new Browser(baseUrl));
  for (const browser of browsers) t.is(await formPost(browser, '/login', { user: 'grace' }), 302);
  t.regex((await browsers[0]!.get('/')).body as string, /Not signed in/, 'the oldest was revoked');
  for (const browser of browsers.slice(1)) {
    t.regex((await browser.get('/')).body as string, /Signed in as <b>grace<\/b>/);
  }
  const rows = (await sessionRows(admin)).filter((row) => row.user_id === 'grace');
  t.is(rows.filter((row) => row.revoked_at === null).length, 5);
  t.is(rows.filter((row) => row.revoked_reason === 'max_sessions').length, 1);
});

test.serial('"log out everywhere else" ends every other session of the user', async (t) => {
  const browsers = Array.from({ length: 3 }, () => new Browser(baseUrl));
  for (const browser of browsers) await formPost(browser, '/login', { user: 'linus' });
  t.is(await formPost(browsers[0]!, '/devices/revoke-others'), 302);
  t.regex((await browsers[0]!.get('/')).body as string, /Signed in as <b>linus<\/b>/);
  t.regex((await browsers[1]!.get('/')).body as string, /Not signed in/);
  t.regex((await browsers[2]!.get('/')).body as string, /Not signed in/);
});
