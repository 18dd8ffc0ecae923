// The demo in a real browser: Debian's Chromium driven by playwright-core, with browser
// contexts as the devices of one user. Without Chromium this file says in one line what
// to install and passes, so `npm test` runs everything else; under CI it fails instead.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import type pg from 'pg';
import type { Browser, BrowserContext, BrowserContextOptions, Page } from 'playwright-core';
import { createDemoApp, type DemoOptions } from '../examples/app.js';
import {
  backdateSessions,
  CHROMIUM_MISSING,
  captureDevicesScreenshots,
  chromiumInstalled,
  launchChromium,
  SCREENSHOT_FILES,
} from '../scripts/demo-browser.js';
import type { SessionOptions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';

const inCi = Boolean(process.env.CI) && process.env.CI !== 'false';

if (!chromiumInstalled()) {
  test('the browser tests need Chromium', (t) => {
    if (inCi) {
      t.fail(CHROMIUM_MISSING);
      return;
    }
    t.log(`skipped: ${CHROMIUM_MISSING}`);
    t.pass();
  });
} else {
  browserSuite();
}

const AGENTS = {
  windowsChrome:
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36',
  iphoneSafari:
    'Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.5 Mobile/15E148 Safari/604.1',
  linuxFirefox: 'Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0',
};

function browserSuite(): void {
  let db: TestDatabase;
  let admin: pg.Pool;
  let browser: Browser;
  const servers: (() => Promise<void>)[] = [];

  /** The demo on a free loopback port; closed after the file. */
  async function startDemo(options: Partial<SessionOptions> = {}, demo: DemoOptions = {}) {
    const { app, middleware } = createDemoApp({ database: db.appUrl, gc: false, ...options }, demo);
    app.silent = true;
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    servers.push(async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await middleware.close();
    });
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  let baseUrl: string;

  test.before(async () => {
    ({ db, admin } = await setupDatabase());
    baseUrl = await startDemo();
    browser = await launchChromium();
  });

  test.after.always(async () => {
    await browser?.close();
    for (const close of servers) await close();
    await admin?.end();
    await db?.drop();
  });

  /** A device: a browser context of its own (its own cookies), with one page. */
  interface Device {
    readonly context: BrowserContext;
    readonly page: Page;
    /** Console errors and uncaught exceptions of its pages. */
    readonly errors: string[];
  }

  async function device(
    t: ExecutionContext,
    options: BrowserContextOptions = {},
    url = baseUrl,
  ): Promise<Device> {
    const context = await browser.newContext({ baseURL: url, ...options });
    t.teardown(() => context.close());
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`${page.url()}: ${message.text()}`);
    });
    page.on('pageerror', (error) => errors.push(`${page.url()}: ${error.message}`));
    return { context, page, errors };
  }

  async function signIn(page: Page, user: string): Promise<void> {
    await page.getByLabel('User name').fill(user);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForLoadState();
  }

  const notice = (page: Page) => page.getByRole('status');
  const accountBar = (page: Page) => page.getByRole('navigation', { name: 'Account' });

  async function sessionCookie(context: BrowserContext) {
    return (await context.cookies()).find((cookie) => /^(__Host-)?sid$/.test(cookie.name));
  }

  test.serial(
    'a first visit: the sign-in form with labels, one session for its forms, no console error',
    async (t) => {
      const visitor = await device(t);
      const response = await visitor.page.goto('/');
      t.is(response?.status(), 200);
      t.is(await visitor.page.title(), 'Welcome · pg-sessions demo');
      t.is(await accountBar(visitor.page).textContent(), 'Not signed in');
      t.true(await visitor.page.getByLabel('User name').isVisible());
      t.true(await visitor.page.getByLabel('Item').isVisible());
      t.is(
        await visitor.page.locator('meta[name=viewport]').getAttribute('content'),
        'width=device-width, initial-scale=1',
      );
      t.is(await notice(visitor.page).count(), 0);
      // The forms carry a CSRF token of the visitor's session: the page saves one.
      t.truthy(await sessionCookie(visitor.context));
      const token = await visitor.page.locator('form[action="/login"] input[name=_csrf]');
      t.regex((await token.getAttribute('value')) ?? '', /^[A-Za-z0-9_-]{50,}$/);
      t.deepEqual(visitor.errors, []);
    },
  );

  test.serial('the counter and the cart survive signing in, under a new token', async (t) => {
    const laptop = await device(t);
    await laptop.page.goto('/');
    await laptop.page.getByRole('button', { name: 'Count' }).click();
    await laptop.page.getByRole('button', { name: 'Count' }).click();
    await laptop.page.getByLabel('Item').fill('tea <b>');
    await laptop.page.getByRole('button', { name: 'Add to cart' }).click();
    const anonymous = await sessionCookie(laptop.context);
    t.truthy(anonymous);

    await signIn(laptop.page, 'ada');
    t.is(await laptop.page.locator('.count').textContent(), '2');
    t.deepEqual(await laptop.page.locator('ul.items li').allTextContents(), ['tea <b>']);
    t.regex((await accountBar(laptop.page).textContent()) ?? '', /Signed in as ada/);
    t.not((await sessionCookie(laptop.context))?.value, anonymous?.value, 'a new token at login');
    t.deepEqual(laptop.errors, []);
  });

  test.serial(
    'devices of one user, each by browser, system and address; revoking one tells it why',
    async (t) => {
      const laptop = await device(t, { userAgent: AGENTS.windowsChrome });
      const phone = await device(t, {
        userAgent: AGENTS.iphoneSafari,
        viewport: { width: 390, height: 844 },
        isMobile: true,
      });
      for (const { page } of [laptop, phone]) {
        await page.goto('/');
        await signIn(page, 'grace');
      }
      await laptop.page.getByRole('link', { name: 'Your devices' }).click();
      const items = laptop.page.locator('li.device');
      t.is(await items.count(), 2);
      t.regex((await items.nth(0).textContent()) ?? '', /Chrome on Windows\s*This device/);
      t.regex((await items.nth(0).textContent()) ?? '', /Chrome 156 · Windows · 127\.0\.0\.1/);
      t.regex((await items.nth(1).textContent()) ?? '', /Safari on iOS 18/);
      const signedIn = items.nth(1).locator('time').last();
      t.is(await signedIn.textContent(), 'just now');
      t.regex(
        (await signedIn.getAttribute('title')) ?? '',
        /^\d{1,2} \w{3} \d{4}, \d\d:\d\d:\d\d UTC$/,
      );

      await laptop.page.getByRole('button', { name: 'Sign out Safari on iOS 18' }).click();
      t.is(
        await notice(laptop.page).textContent(),
        'Signed out Safari on iOS 18. It will be asked to sign in again.',
      );
      t.is(await items.count(), 1);
      t.is(await laptop.page.getByRole('button', { name: 'Log out everywhere else' }).count(), 0);

      // The phone still shows the devices page it had; its next request finds out.
      await phone.page.goto('/devices');
      t.regex(
        (await notice(phone.page).textContent()) ?? '',
        /^This device was signed out just now from another of your devices\.$/,
      );
      t.is(await accountBar(phone.page).textContent(), 'Not signed in');
      t.is(await phone.page.locator('li.device').count(), 0, 'no list while signed out');
      t.is(await phone.page.getByRole('button', { name: 'Log out everywhere else' }).count(), 0);
      t.true(await phone.page.getByLabel('User name').isVisible());
      await phone.page.reload();
      t.is(await notice(phone.page).count(), 0, 'told once');
      t.deepEqual([...laptop.errors, ...phone.errors], []);
    },
  );

  test.serial(
    '"log out everywhere else": the other devices are told, the button goes',
    async (t) => {
      const devices = [await device(t), await device(t), await device(t)];
      for (const { page } of devices) {
        await page.goto('/');
        await signIn(page, 'linus');
      }
      const [mine, second, third] = devices as [Device, Device, Device];
      await mine.page.goto('/devices');
      t.is(await mine.page.locator('li.device').count(), 3);
      await mine.page.getByRole('button', { name: 'Log out everywhere else' }).click();
      t.is(await notice(mine.page).textContent(), 'Signed out 2 other devices.');
      t.is(await mine.page.locator('li.device').count(), 1);
      t.is(await mine.page.getByRole('button', { name: 'Log out everywhere else' }).count(), 0);
      t.true(await mine.page.getByText('No other device is signed in.').isVisible());
      for (const other of [second, third]) {
        // A form post from the stale page: the notice survives the redirect.
        await other.page.getByRole('button', { name: 'Count' }).click();
        t.regex(
          (await notice(other.page).textContent()) ?? '',
          /you chose “Log out everywhere else” on another device/,
        );
        t.is(await accountBar(other.page).textContent(), 'Not signed in');
      }
      t.deepEqual(
        devices.flatMap(({ errors }) => errors),
        [],
      );
    },
  );

  test.serial('signing out this device from its list, then logging out on another', async (t) => {
    const laptop = await device(t);
    const desktop = await device(t);
    for (const { page } of [laptop, desktop]) {
      await page.goto('/');
      await signIn(page, 'barbara');
    }
    await laptop.page.goto('/devices');
    const signedIn = await sessionCookie(laptop.context);
    await laptop.page.getByRole('button', { name: /\(this device\)$/ }).click();
    t.is(new URL(laptop.page.url()).pathname, '/');
    t.is(
      await notice(laptop.page).textContent(),
      'You signed out this device. Your other devices stay signed in.',
    );
    t.is(await accountBar(laptop.page).textContent(), 'Not signed in');
    // The home page's forms need a session: a new, anonymous one replaced the cookie.
    t.not((await sessionCookie(laptop.context))?.value, signedIn?.value, 'the cookie is gone');

    await desktop.page.goto('/devices');
    t.is(await desktop.page.locator('li.device').count(), 1, 'the desktop is left');
    await desktop.page.getByRole('button', { name: 'Log out' }).click();
    t.is(await notice(desktop.page).textContent(), 'You signed out.');
    t.is(await accountBar(desktop.page).textContent(), 'Not signed in');
    await desktop.page.goto('/devices');
    t.true(await desktop.page.getByText('Sign in to see the devices').isVisible());
    t.deepEqual([...laptop.errors, ...desktop.errors], []);
  });

  test.serial('a tampered cookie: a fresh session, signed out, no notice, no error', async (t) => {
    const laptop = await device(t);
    await laptop.page.goto('/');
    await signIn(laptop.page, 'edsger');
    const cookie = (await sessionCookie(laptop.context))!;
    const flipped = cookie.value.endsWith('A') ? 'B' : 'A';
    await laptop.context.addCookies([
      { ...cookie, value: `${cookie.value.slice(0, -1)}${flipped}` },
    ]);
    const response = await laptop.page.goto('/');
    t.is(response?.status(), 200);
    t.is(await accountBar(laptop.page).textContent(), 'Not signed in');
    t.is(await laptop.page.locator('.count').textContent(), '0');
    t.is(await notice(laptop.page).count(), 0);
    t.deepEqual(laptop.errors, []);
  });

  test.serial(
    'the session cap: the oldest of six devices is told it was one too many',
    async (t) => {
      const devices: Device[] = [];
      for (let index = 0; index < 6; index++) {
        const next = await device(t);
        await next.page.goto('/');
        await signIn(next.page, 'margaret');
        devices.push(next);
      }
      const [oldest, ...rest] = devices as [Device, ...Device[]];
      await oldest.page.reload();
      t.regex(
        (await notice(oldest.page).textContent()) ?? '',
        /because you signed in on more than 5 devices; the oldest sign-in ends first/,
      );
      t.is(await accountBar(oldest.page).textContent(), 'Not signed in');
      await rest[0]!.page.goto('/devices');
      t.is(await rest[0]!.page.locator('li.device').count(), 5);
      t.deepEqual(
        devices.flatMap(({ errors }) => errors),
        [],
      );
    },
  );

  test.serial('an expired session: the device is told, with the time on hover', async (t) => {
    const laptop = await device(t);
    await laptop.page.goto('/');
    await signIn(laptop.page, 'frances');
    await admin.query(
      `UPDATE sessions.session
          SET idle_expires_at = now() - interval '5 minutes', absolute_expires_at = now() - interval '5 minutes'
        WHERE user_id = 'frances'`,
    );
    // The app node's cache drops the row on the notification.
    await new Promise((resolve) => setTimeout(resolve, 200));
    await laptop.page.reload();
    t.regex(
      (await notice(laptop.page).textContent()) ?? '',
      /^Your session expired 5 minutes ago\. Sign in again to continue\.$/,
    );
    t.regex((await notice(laptop.page).locator('time').getAttribute('title')) ?? '', /UTC$/);
    t.deepEqual(laptop.errors, []);
  });

  test.serial('errors are styled pages with their real status; the favicon is there', async (t) => {
    const visitor = await device(t);
    await visitor.page.goto('/');
    // Spaces pass the field's `required`; the server refuses them.
    await visitor.page.getByLabel('User name').fill('   ');
    const [refused] = await Promise.all([
      visitor.page.waitForResponse((response) => response.url().endsWith('/login')),
      visitor.page.getByRole('button', { name: 'Sign in' }).click(),
    ]);
    t.is(refused.status(), 400);
    await visitor.page.waitForLoadState();
    t.is(await visitor.page.locator('#user-error').textContent(), 'Enter a user name to sign in.');
    t.is(await visitor.page.getByLabel('User name').getAttribute('aria-invalid'), 'true');

    for (const path of ['/login', '/logout']) {
      const response = await visitor.page.goto(path);
      t.is(response?.status(), 405, path);
      t.is(await visitor.page.locator('h1').textContent(), 'Not here');
    }
    const missing = await visitor.page.goto('/nowhere');
    t.is(missing?.status(), 404);
    t.is(await visitor.page.locator('h1').textContent(), 'Page not found');
    t.true(await visitor.page.getByText('There is no page at /nowhere.').isVisible());
    const favicon = await visitor.page.request.get('/favicon.ico');
    t.is(favicon.status(), 200);
    t.deepEqual(unexpected(visitor.errors), []);
  });

  test.serial('readable at 390 px: no sideways scrolling, a long user name wraps', async (t) => {
    const phone = await device(t, { viewport: { width: 390, height: 844 }, isMobile: true });
    const longName = `${'ada-lovelace-'.repeat(8)}the-first-programmer@analytical-engine.example`;
    await phone.page.goto('/');
    await signIn(phone.page, longName);
    for (const path of ['/', '/devices', '/nowhere']) {
      await phone.page.goto(path);
      const width = await phone.page.evaluate('document.documentElement.scrollWidth');
      t.true(Number(width) <= 390, `${path} is ${width} px wide`);
    }
    await phone.page.goto('/devices');
    for (const name of await phone.page.locator('.user').all()) {
      const box = (await name.boundingBox())!;
      t.true(box.x >= 0 && box.x + box.width <= 390, 'the name wraps inside the screen');
      t.true(box.height > 30, 'on several lines');
    }
    t.deepEqual(unexpected(phone.errors), []);
  });

  test.serial(
    'cookie flags as the browser stores them, over HTTP and behind a TLS proxy',
    async (t) => {
      const plain = await device(t);
      await plain.page.goto('/');
      await signIn(plain.page, 'ken');
      t.like(await sessionCookie(plain.context), {
        name: 'sid',
        httpOnly: true,
        sameSite: 'Lax',
        secure: false,
        path: '/',
      });

      const proxied = await device(
        t,
        { extraHTTPHeaders: { 'X-Forwarded-Proto': 'https' } },
        await startDemo({}, { proxy: true }),
      );
      await proxied.page.goto('/');
      await signIn(proxied.page, 'ken');
      const cookie = await sessionCookie(proxied.context);
      t.like(cookie, {
        name: '__Host-sid',
        httpOnly: true,
        sameSite: 'Lax',
        secure: true,
        path: '/',
      });
      t.regex((await accountBar(proxied.page).textContent()) ?? '', /Signed in as ken/);
      t.deepEqual([...plain.errors, ...proxied.errors], []);
    },
  );

  test.serial(
    'a form posted from another origin of the same site is refused; without csrf it would land',
    async (t) => {
      // 127.0.0.1 on another port: another origin, the same site, so the browser sends
      // the SameSite=Lax cookie with the cross-origin POST (as from a sibling subdomain).
      const unprotected = await startDemo({ csrf: false });
      for (const [target, expected] of [
        [baseUrl, 403],
        [unprotected, 302],
      ] as const) {
        const victim = await device(t, {}, target);
        await victim.page.goto('/');
        await signIn(victim.page, 'whitfield');
        const attacker = await attackerSite(target);
        t.teardown(attacker.close);
        const [landed] = await Promise.all([
          victim.page.waitForResponse((response) => response.url() === `${target}/cart`),
          victim.page.goto(attacker.url),
        ]);
        t.is(landed.status(), expected, target);
        await victim.page.goto('/');
        const cart = await victim.page.locator('ul.items li').allTextContents();
        t.deepEqual(cart, expected === 403 ? [] : ['planted by another site'], target);
        t.regex((await accountBar(victim.page).textContent()) ?? '', /Signed in as whitfield/);
      }
    },
  );

  test.serial('screenshots of the devices page at 390 px and at desktop width', async (t) => {
    const outDir = await mkdtemp(join(tmpdir(), 'pg-sessions-screenshots-'));
    t.teardown(() => rm(outDir, { recursive: true, force: true }));
    const files = await captureDevicesScreenshots({
      browser,
      baseUrl: await startDemo({}, { proxy: true }),
      outDir,
      user: 'screenshot@example.com',
      backdate: (user) => backdateSessions(admin, user),
    });
    t.deepEqual(files, [
      join(outDir, SCREENSHOT_FILES.desktop),
      join(outDir, SCREENSHOT_FILES.phone),
    ]);
    const widths = await Promise.all(files.map(async (file) => pngWidth(await readFile(file))));
    t.deepEqual(widths, [1280, 780], 'desktop at 1x, the phone at 390 px and 2x');
  });
}

/** Another origin of the same site: a page whose form posts to the demo by itself. */
async function attackerSite(target: string): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((_request, response) => {
    response.setHeader('content-type', 'text/html');
    response.end(`<!doctype html><title>Win a prize</title>
<form method="post" action="${target}/cart"><input name="item" value="planted by another site"></form>
<script>document.forms[0].submit()</script>`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * Console errors but the one Chromium logs for an error page itself ("Failed to load
 * resource: … status of 404"), which the error-page tests ask for on purpose.
 */
function unexpected(errors: readonly string[]): string[] {
  const errorPage =
    /^\S+\/(login|logout|nowhere): Failed to load resource: the server responded with a status of 40[045] /;
  return errors.filter((error) => !errorPage.test(error));
}

/** A PNG's width, from its IHDR chunk. */
function pngWidth(png: Buffer): number {
  if (png.toString('latin1', 1, 4) !== 'PNG') throw new Error('not a PNG');
  return png.readUInt32BE(16);
}
