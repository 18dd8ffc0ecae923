// "Chrome on Windows": a device described from its User-Agent header, for the devices
// page. Deliberately small (the common browsers and systems, by their usual tokens);
// a real product may prefer a maintained parser, or User-Agent Client Hints.

/** What a user recognises their device by. */
export interface DeviceDescription {
  /** "Chrome 156", "Safari 18", "Firefox 140", or "Unknown browser". */
  readonly browser: string;
  /** "Windows", "macOS", "iOS 18", "Android 15", "Linux", or "Unknown system". */
  readonly os: string;
  /** For the icon: a phone, a tablet, or a computer (the default). */
  readonly kind: 'phone' | 'tablet' | 'computer';
}

/** Browsers in the order to test them: Chromium-based ones also say "Chrome" and "Safari". */
const BROWSERS: readonly [name: string, pattern: RegExp][] = [
  ['Edge', /\bEdg(?:e|A|iOS)?\/(\d+)/],
  ['Opera', /\b(?:OPR|OPT)\/(\d+)/],
  ['Samsung Internet', /\bSamsungBrowser\/(\d+)/],
  ['Firefox', /\b(?:Firefox|FxiOS)\/(\d+)/],
  ['Chrome', /\b(?:HeadlessChrome|Chrome|CriOS|Chromium)\/(\d+)/],
  ['Safari', /\bVersion\/(\d+)(?:[.\d]*)? (?:Mobile\/\w+ )?Safari\//],
  ['curl', /^curl\/(\d+)/],
];

/** Describes a User-Agent header; never throws, whatever the header holds. */
export function describeUserAgent(userAgent: string | null | undefined): DeviceDescription {
  const ua = (userAgent ?? '').slice(0, 1024);
  return { browser: browserOf(ua), os: systemOf(ua), kind: kindOf(ua) };
}

/** "Chrome on Windows", as the devices page titles a device. */
export function deviceTitle(description: DeviceDescription): string {
  const browser = description.browser.replace(/ \d+$/, '');
  return description.os === 'Unknown system' ? browser : `${browser} on ${description.os}`;
}

function browserOf(ua: string): string {
  for (const [name, pattern] of BROWSERS) {
    const version = pattern.exec(ua)?.[1];
    if (version) return `${name} ${version}`;
  }
  return 'Unknown browser';
}

function systemOf(ua: string): string {
  const ios = /\b(?:iPhone|iPod)\b.*? OS (\d+)_/.exec(ua);
  if (ios) return `iOS ${ios[1]}`;
  const ipad = /\biPad\b.*? OS (\d+)_/.exec(ua);
  if (ipad) return `iPadOS ${ipad[1]}`;
  const android = /\bAndroid (\d+)/.exec(ua);
  if (android) return `Android ${android[1]}`;
  if (/\bAndroid\b/.test(ua)) return 'Android';
  if (/\bWindows\b/.test(ua)) return 'Windows';
  if (/\bCrOS\b/.test(ua)) return 'ChromeOS';
  if (/\bMac OS X\b|\bMacintosh\b/.test(ua)) return 'macOS';
  if (/\bLinux\b|\bX11\b/.test(ua)) return 'Linux';
  return 'Unknown system';
}

function kindOf(ua: string): DeviceDescription['kind'] {
  if (/\biPad\b|\bTablet\b/.test(ua) || (/\bAndroid\b/.test(ua) && !/\bMobile\b/.test(ua))) {
    return 'tablet';
  }
  if (/\biPhone\b|\biPod\b|\bMobile\b/.test(ua)) return 'phone';
  return 'computer';
}
