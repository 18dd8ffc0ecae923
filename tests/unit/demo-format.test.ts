import test from 'ava';
import { escapeHtml, exactTime, relativeTime, timeTag } from '../../examples/format.js';
import { describeUserAgent, deviceTitle } from '../../examples/user-agent.js';

const now = new Date('2026-05-01T12:00:00Z');
const ago = (seconds: number) => new Date(now.getTime() - seconds * 1000);

test('relative times use the largest whole unit, and "just now" under 45 seconds', (t) => {
  t.is(relativeTime(ago(10), now), 'just now');
  t.is(relativeTime(ago(-10), now), 'just now');
  t.is(relativeTime(ago(50), now), '1 minute ago');
  t.is(relativeTime(ago(90), now), '2 minutes ago');
  t.is(relativeTime(ago(13 * 3600), now), '13 hours ago', 'not "yesterday"');
  t.is(relativeTime(ago(26 * 3600), now), 'yesterday');
  t.is(relativeTime(ago(3 * 86_400), now), '3 days ago');
  t.is(relativeTime(ago(15 * 86_400), now), '2 weeks ago');
  t.is(relativeTime(ago(-2 * 86_400), now), 'in 2 days');
  t.is(relativeTime(ago(400 * 86_400), now), 'last year');
});

test('the exact time is in UTC, on hover of a <time> element', (t) => {
  t.is(exactTime(now), '1 May 2026, 12:00:00 UTC');
  t.is(
    timeTag(ago(120), now),
    '<time datetime="2026-05-01T11:58:00.000Z" title="1 May 2026, 11:58:00 UTC">2 minutes ago</time>',
  );
});

test('HTML escaping covers text and attribute values', (t) => {
  t.is(
    escapeHtml(`<a href="x" title='y'>&</a>`),
    '&#60;a href=&#34;x&#34; title=&#39;y&#39;&#62;&#38;&#60;/a&#62;',
  );
});

const AGENTS: [string, string, string, 'phone' | 'tablet' | 'computer'][] = [
  [
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36',
    'Chrome 156',
    'Windows',
    'computer',
  ],
  [
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36 Edg/156.0.0.0',
    'Edge 156',
    'Windows',
    'computer',
  ],
  [
    'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.5 Safari/605.1.15',
    'Safari 18',
    'macOS',
    'computer',
  ],
  [
    'Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.5 Mobile/15E148 Safari/604.1',
    'Safari 18',
    'iOS 18',
    'phone',
  ],
  [
    'Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/156.0.0.0 Mobile/15E148 Safari/604.1',
    'Chrome 156',
    'iOS 18',
    'phone',
  ],
  [
    'Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1',
    'Safari 17',
    'iPadOS 17',
    'tablet',
  ],
  [
    'Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36',
    'Chrome 156',
    'Android 15',
    'phone',
  ],
  [
    'Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/27.0 Chrome/125.0.0.0 Mobile Safari/537.36',
    'Samsung Internet 27',
    'Android 14',
    'phone',
  ],
  [
    'Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0',
    'Firefox 140',
    'Linux',
    'computer',
  ],
  [
    'Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36 OPR/120.0.0.0',
    'Opera 120',
    'ChromeOS',
    'computer',
  ],
  ['curl/8.5.0', 'curl 8', 'Unknown system', 'computer'],
];

test('a user agent is described by its browser, system and kind of device', (t) => {
  for (const [agent, browser, os, kind] of AGENTS) {
    t.deepEqual(describeUserAgent(agent), { browser, os, kind }, agent);
  }
});

test('a missing or odd user agent is described without throwing', (t) => {
  t.deepEqual(describeUserAgent(null), {
    browser: 'Unknown browser',
    os: 'Unknown system',
    kind: 'computer',
  });
  t.deepEqual(describeUserAgent('<script>'.repeat(500)).browser, 'Unknown browser');
  t.is(deviceTitle(describeUserAgent(AGENTS[0]![0])), 'Chrome on Windows');
  t.is(deviceTitle(describeUserAgent('curl/8.5.0')), 'curl');
});
