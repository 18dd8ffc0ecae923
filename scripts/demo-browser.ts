// Debian's Chromium driven by playwright-core (which never downloads a browser), for
// the browser tests and for the README's screenshots of the demo's devices page.
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { type Browser, type BrowserContext, chromium } from 'playwright-core';

/** Where Debian's `chromium` package puts the browser. */
export const CHROMIUM_PATH = '/usr/bin/chromium';

/** One line that says what is missing and how to get it. */
export const CHROMIUM_MISSING = `no Chromium at ${CHROMIUM_PATH}: install it with \`apt-get install chromium\` (Debian, Ubuntu) to run the browser tests and \`npm run screenshots\``;

export function chromiumInstalled(): boolean {
  return existsSync(CHROMIUM_PATH);
}

/**
 * Starts headless Chromium with a fresh profile (playwright-core makes a temporary
 * user-data dir and removes it on close) that talks to the loopback interface only:
 * no background traffic, no updates, and every other host name fails to resolve.
 */
export function launchChromium(): Promise<Browser> {
  if (!chromiumInstalled()) return Promise.reject(new Error(CHROMIUM_MISSING));
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
    ],
  });
}

/** Devices of one user, as the screenshots show them (the server trusts X-Forwarded-For). */
export const SCREENSHOT_DEVICES = {
  laptop: {
    userAgent:
      'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36',
    ip: '203.0.113.24',
  },
  phone: {
    userAgent:
      'Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.5 Mobile/15E148 Safari/604.1',
    ip: '198.51.100.7',
  },
  office: {
    userAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0',
    ip: '192.0.2.141',
  },
  tablet: {
    userAgent:
      'Mozilla/5.0 (Linux; Android 15; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/155.0.0.0 Safari/537.36',
    ip: '198.51.100.52',
  },
} as const;

/** The screenshot files, by width. */
export const SCREENSHOT_FILES = {
  phone: 'demo-devices-390.png',
  desktop: 'demo-devices-desktop.png',
} as const;

export interface ScreenshotOptions {
  readonly browser: Browser;
  /** The demo, started with `{ proxy: true }` so that each device shows its own address. */
  readonly baseUrl: string;
  readonly outDir: string;
  readonly user?: string;
  /** Called once every device has signed in: make their times look lived-in. */
  readonly backdate?: (userId: string) => Promise<void>;
}

/**
 * Signs four devices in as one user and photographs the devices page as the laptop
 * sees it (1280 px) and as the phone does (390 px, at twice the pixel density).
 * Returns the files written.
 */
export async function captureDevicesScreenshots(options: ScreenshotOptions): Promise<string[]> {
  const { browser, baseUrl, outDir, user = 'ada.lovelace@example.com' } = options;
  await mkdir(outDir, { recursive: true });
  const contexts: BrowserContext[] = [];
  const device = async (
    which: keyof typeof SCREENSHOT_DEVICES,
    view: { width: number; height: number; deviceScaleFactor: number; isMobile: boolean },
  ) => {
    const { userAgent, ip } = SCREENSHOT_DEVICES[which];
    const context = await browser.newContext({
      baseURL: baseUrl,
      userAgent,
      viewport: { width: view.width, height: view.height },
      deviceScaleFactor: view.deviceScaleFactor,
      isMobile: view.isMobile,
      hasTouch: view.isMobile,
      extraHTTPHeaders: { 'X-Forwarded-For': ip },
      colorScheme: 'light',
    });
    contexts.push(context);
    const page = await context.newPage();
    await page.goto('/');
    await page.getByLabel('User name').fill(user);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL('/');
    return page;
  };
  try {
    const desktop = { width: 1280, height: 680, deviceScaleFactor: 1, isMobile: false };
    const mobile = { width: 390, height: 844, deviceScaleFactor: 2, isMobile: true };
    await device('tablet', { ...mobile, width: 800, height: 1280 });
    await device('office', desktop);
    const phone = await device('phone', mobile);
    const laptop = await device('laptop', desktop);
    await options.backdate?.(user);
    const files = [join(outDir, SCREENSHOT_FILES.desktop), join(outDir, SCREENSHOT_FILES.phone)];
    await laptop.goto('/devices');
    await laptop.screenshot({ path: files[0], fullPage: true });
    await phone.goto('/devices');
    await phone.screenshot({ path: files[1], fullPage: true });
    return files;
  } finally {
    for (const context of contexts) await context.close();
  }
}

/**
 * Spreads a user's sessions over the past week (within the default expiries), oldest sign-in first, as a real
 * account's would be. Only for a throwaway database: creation times are immutable, so
 * this runs as superuser with triggers off (`session_replication_role = replica`).
 */
export async function backdateSessions(admin: pg.Pool, userId: string): Promise<void> {
  const client = await admin.connect();
  try {
    await client.query('BEGIN');
    await client.query(`SET LOCAL session_replication_role = replica`);
    await client.query(
      `WITH ordered AS (
         SELECT tenant_id, id, row_number() OVER (ORDER BY created_at, id) AS n
           FROM sessions.session WHERE user_id = $1 AND revoked_at IS NULL)
       UPDATE sessions.session s
          SET created_at = now() - (ARRAY[interval '6 days 4 hours', interval '3 days', interval '2 hours', interval '25 minutes'])[o.n],
              last_seen_at = now() - (ARRAY[interval '20 hours', interval '5 hours', interval '3 minutes', interval '0'])[o.n]
         FROM ordered o
        WHERE s.tenant_id = o.tenant_id AND s.id = o.id AND o.n <= 4`,
      [userId],
    );
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}
