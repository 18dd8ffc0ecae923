// The demo's pages: server-rendered HTML and a little CSS, no script, no dependency.
import type { DeviceSession } from '../src/index.js';
import { escapeHtml, timeTag } from './format.js';
import { type Notice, noticeHtml, noticeTone } from './notices.js';
import { type DeviceDescription, describeUserAgent, deviceTitle } from './user-agent.js';

/** What every page knows about the visitor. */
export interface Visitor {
  readonly userId: string | null;
  readonly notice?: Notice;
  /** A CSRF token of the visitor's session: every form carries it (option `csrf`). */
  readonly csrf?: string;
}

/** The hidden field that proves a form came from one of our pages. */
function csrfField(visitor: Visitor): string {
  return visitor.csrf
    ? `<input type="hidden" name="_csrf" value="${escapeHtml(visitor.csrf)}">`
    : '';
}

/** A key, a little circle: the favicon, so the browser finds one. */
export const FAVICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="8" fill="#3651d4"/><circle cx="12" cy="16" r="5" fill="none" stroke="#fff" stroke-width="3"/><path d="M17 16h9m-3 0v4" stroke="#fff" stroke-width="3" stroke-linecap="round"/></svg>`;

const CSS = `
*,*::before,*::after{box-sizing:border-box}
:root{--ink:#1c2230;--muted:#5d6677;--line:#dfe3ea;--bg:#f5f6f8;--card:#fff;--accent:#3651d4;--danger:#b3261e;--ok-bg:#e8f5ec;--ok-ink:#17603a;--warn-bg:#fff4df;--warn-ink:#7a4b00}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg);overflow-wrap:break-word}
.user{overflow-wrap:anywhere}
header{background:var(--card);border-bottom:1px solid var(--line)}
.bar{max-width:52rem;margin:0 auto;padding:.75rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center}
.brand{font-weight:700;color:var(--ink);text-decoration:none;margin-right:auto}
nav{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:center}
nav a{color:var(--accent)}
main{max-width:52rem;margin:0 auto;padding:1.25rem 1rem 3rem}
h1{font-size:1.6rem;line-height:1.25;margin:.25rem 0 1rem}
h2{font-size:1.1rem;margin:0 0 .75rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1rem 1.25rem;margin:0 0 1rem}
.notice{border-radius:10px;padding:.75rem 1rem;margin:0 0 1rem;border:1px solid}
.notice.warning{background:var(--warn-bg);color:var(--warn-ink);border-color:#f0d49b}
.notice.success{background:var(--ok-bg);color:var(--ok-ink);border-color:#b9dfc6}
.muted{color:var(--muted)}
form.inline{display:flex;flex-wrap:wrap;gap:.5rem;align-items:flex-end}
.field{display:flex;flex-direction:column;gap:.25rem;flex:1 1 12rem;min-width:0}
label{font-weight:600;font-size:.9rem}
input{font:inherit;padding:.5rem .65rem;border:1px solid #b9c0cc;border-radius:8px;width:100%;background:#fff;color:inherit}
input:focus-visible,button:focus-visible,a:focus-visible{outline:3px solid #9fb0f5;outline-offset:1px}
input[aria-invalid=true]{border-color:var(--danger)}
.error{color:var(--danger);font-size:.9rem;margin:.25rem 0 0}
button{font:inherit;font-weight:600;padding:.5rem 1rem;border-radius:8px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
button.secondary{background:#fff;color:var(--accent)}
button.danger{background:#fff;color:var(--danger);border-color:#e4b4b0}
button.link{background:none;border:0;padding:0;color:var(--accent);font-weight:400;text-decoration:underline}
.counter{display:flex;align-items:center;gap:1rem;flex-wrap:wrap}
.count{font-size:2rem;font-weight:700;min-width:3ch}
ul.items{margin:0 0 .75rem;padding-left:1.25rem}
ul.devices{list-style:none;margin:0;padding:0}
.device{display:flex;gap:.9rem;align-items:flex-start;padding:.9rem 0;border-top:1px solid var(--line)}
.device:first-child{border-top:0;padding-top:.25rem}
.device svg{flex:none;width:2.25rem;height:2.25rem;color:var(--muted);margin-top:.15rem}
.device .about{flex:1;min-width:0}
.device .title{font-weight:600;margin:0}
.device .meta{margin:.1rem 0 0;color:var(--muted);font-size:.92rem}
.badge{display:inline-block;white-space:nowrap;font-size:.75rem;font-weight:700;color:var(--ok-ink);background:var(--ok-bg);border-radius:999px;padding:.05rem .55rem;margin-left:.35rem;vertical-align:.1rem}
.device form{flex:none}
.device form.rename{display:flex;gap:.35rem;align-items:center}
.device form.rename input{width:9rem;min-width:0}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;align-items:center;margin-top:1rem}
time{text-decoration:underline dotted var(--muted);text-underline-offset:3px}
@media (max-width:30rem){.device{flex-wrap:wrap}.device form.rename{flex:1 1 auto;min-width:0}.device form.rename input{flex:1 1 auto;width:auto}.device .about{flex:1 1 calc(100% - 3.15rem)}.device form{margin-left:3.15rem}h1{font-size:1.4rem}.card{padding:.9rem 1rem}}
`;

/** The page frame: header with the user, the notice, the content. */
export function layout(title: string, visitor: Visitor, content: string): string {
  const { userId, notice } = visitor;
  const navigation = userId
    ? `<nav aria-label="Account"><span class="muted">Signed in as <b class="user">${escapeHtml(userId)}</b></span>
       <a href="/devices">Your devices</a>
       <form method="post" action="/logout">${csrfField(visitor)}<button class="link">Log out</button></form></nav>`
    : `<nav aria-label="Account"><span class="muted">Not signed in</span></nav>`;
  const banner = notice
    ? `<p class="notice ${noticeTone(notice)}" role="status">${noticeHtml(notice)}</p>`
    : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · pg-sessions demo</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<style>${CSS}</style>
</head>
<body>
<header><div class="bar"><a class="brand" href="/">pg-sessions demo</a>${navigation}</div></header>
<main>
${banner}
<h1>${escapeHtml(title)}</h1>
${content}
</main>
</body>
</html>`;
}

/** The sign-in form; `error` marks the field (the 400 answer re-renders it). */
export function signInForm(
  visitor: Visitor,
  options: { returnTo?: string; error?: string; value?: string } = {},
) {
  const { returnTo = '/', error, value = '' } = options;
  return `<section class="card" aria-labelledby="sign-in">
  <h2 id="sign-in">Sign in</h2>
  <p class="muted">Any name will do: authentication is the application's job; the session library keeps who signed in.</p>
  <form class="inline" method="post" action="/login">${csrfField(visitor)}
    <input type="hidden" name="return" value="${escapeHtml(returnTo)}">
    <div class="field"><label for="user">User name</label>
      <input id="user" name="user" autocomplete="username" required maxlength="${MAX_USER_NAME}" value="${escapeHtml(value)}"${
        error ? ' aria-invalid="true" aria-describedby="user-error"' : ''
      }>
      ${error ? `<p class="error" id="user-error">${escapeHtml(error)}</p>` : ''}
    </div>
    <button>Sign in</button>
  </form>
</section>`;
}

/**
 * "Log out everywhere else" after a sign-in older than the step-up window: the demo's
 * proof of identity is the user name typed again (a real application asks for the
 * password or a second factor).
 */
export function confirmIdentityPage(
  visitor: Visitor,
  maxAgeMinutes: number,
  error?: string,
): string {
  return layout(
    'Confirm it is you',
    visitor,
    `<section class="card" aria-labelledby="confirm">
  <h2 id="confirm">Confirm it is you</h2>
  <p>You signed in more than ${maxAgeMinutes} minutes ago. To log out everywhere else, enter your user name again.</p>
  <form class="inline" method="post" action="/devices/revoke-others">${csrfField(visitor)}
    <div class="field"><label for="confirm-user">User name</label>
      <input id="confirm-user" name="user" autocomplete="username" required maxlength="${MAX_USER_NAME}"${
        error ? ' aria-invalid="true" aria-describedby="confirm-error"' : ''
      }>
      ${error ? `<p class="error" id="confirm-error">${escapeHtml(error)}</p>` : ''}
    </div>
    <button class="danger">Log out everywhere else</button>
  </form>
  <p><a href="/devices">Back to your devices</a></p>
</section>`,
  );
}

/** User names are whatever is typed, up to this length (long ones wrap on the page). */
export const MAX_USER_NAME = 200;

/** The home page: counter and cart (they survive signing in), and the sign-in form. */
export function homePage(
  visitor: Visitor,
  session: { count: number; cart: readonly string[] },
  signIn: { error?: string; value?: string } = {},
): string {
  const cart = session.cart.length
    ? `<ul class="items">${session.cart.map((item) => `<li>${escapeHtml(item)}</li>`).join('')}</ul>`
    : '<p class="muted">Your cart is empty.</p>';
  const account = visitor.userId
    ? `<section class="card"><h2>Your account</h2>
        <p>Signed in as <b class="user">${escapeHtml(visitor.userId)}</b>. The counter and the cart came along when you signed in.</p>
        <p><a href="/devices">See the devices signed in to your account</a></p></section>`
    : signInForm(visitor, { returnTo: '/', ...signIn });
  return layout(
    visitor.userId ? 'Welcome back' : 'Welcome',
    visitor,
    `${account}
<section class="card" aria-labelledby="counter">
  <h2 id="counter">Counter</h2>
  <form class="counter" method="post" action="/counter">${csrfField(visitor)}
    <span class="count" aria-live="polite">${session.count}</span>
    <button class="secondary">Count</button>
  </form>
</section>
<section class="card" aria-labelledby="cart">
  <h2 id="cart">Cart</h2>
  ${cart}
  <form class="inline" method="post" action="/cart">${csrfField(visitor)}
    <div class="field"><label for="item">Item</label><input id="item" name="item" required maxlength="100"></div>
    <button class="secondary">Add to cart</button>
  </form>
</section>`,
  );
}

/** "Your devices": every live session of the user, this one first. */
export function devicesPage(
  visitor: Visitor,
  devices: readonly (DeviceSession & { current: boolean })[],
  now = new Date(),
): string {
  if (!visitor.userId) {
    return layout(
      'Your devices',
      visitor,
      `<p>Sign in to see the devices signed in to your account, and to sign them out.</p>
       ${signInForm(visitor, { returnTo: '/devices' })}`,
    );
  }
  const sorted = [...devices].sort((a, b) => Number(b.current) - Number(a.current));
  const others = sorted.filter((device) => !device.current).length;
  return layout(
    'Your devices',
    visitor,
    `<p class="muted">Where <b class="user">${escapeHtml(visitor.userId)}</b> is signed in. Sign out a device you don't recognise.</p>
<section class="card" aria-label="Signed-in devices">
  <ul class="devices">${sorted.map((device) => deviceItem(visitor, device, now)).join('')}</ul>
</section>
<div class="actions">${
      others > 0
        ? `<form method="post" action="/devices/revoke-others">${csrfField(visitor)}<button class="danger">Log out everywhere else</button></form>`
        : '<p class="muted">No other device is signed in.</p>'
    }<a href="/">Back to the demo</a></div>`,
  );
}

function deviceItem(
  visitor: Visitor,
  device: DeviceSession & { current: boolean },
  now: Date,
): string {
  const description = describeUserAgent(device.userAgent);
  // The name its user gave it, else what its browser says it is.
  const title = device.name ?? deviceTitle(description);
  const lastActive = device.current
    ? 'Active now'
    : `Last active ${timeTag(device.lastSeenAt, now)}`;
  return `<li class="device" data-session="${device.id}">
  ${deviceIcon(description.kind)}
  <div class="about">
    <p class="title">${escapeHtml(title)}${device.current ? '<span class="badge">This device</span>' : ''}</p>
    <p class="meta">${escapeHtml(description.browser)} · ${escapeHtml(description.os)}${
      device.ip ? ` · <span class="ip">${escapeHtml(device.ip)}</span>` : ''
    }</p>
    <p class="meta">${lastActive} · signed in ${timeTag(device.createdAt, now)}</p>
  </div>
  <form class="rename" method="post" action="/devices/${device.id}/rename">${csrfField(visitor)}
    <label class="muted" for="name-${device.id}">Name</label>
    <input id="name-${device.id}" name="name" maxlength="100" placeholder="Name this device" value="${escapeHtml(device.name ?? '')}">
    <button class="secondary">Rename</button>
  </form>
  <form method="post" action="/devices/${device.id}/revoke">${csrfField(visitor)}
    <button class="secondary" aria-label="Sign out ${escapeHtml(title)}${device.current ? ' (this device)' : ''}">Sign out</button>
  </form>
</li>`;
}

function deviceIcon(kind: DeviceDescription['kind']): string {
  const shape =
    kind === 'phone'
      ? '<rect x="7" y="2" width="10" height="20" rx="2"/><path d="M11 18h2"/>'
      : kind === 'tablet'
        ? '<rect x="4" y="2" width="16" height="20" rx="2"/><path d="M11 18h2"/>'
        : '<rect x="3" y="4" width="18" height="12" rx="2"/><path d="M2 20h20"/>';
  return `<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round" aria-hidden="true">${shape}</svg>`;
}

/** An error page with the real status and a sentence a user can act on. */
export function errorPage(visitor: Visitor, status: number, message: string): string {
  const titles: Record<number, string> = {
    400: 'That did not work',
    403: 'That form has expired',
    404: 'Page not found',
    405: 'Not here',
    409: 'Try again',
    503: 'Temporarily unavailable',
  };
  return layout(
    titles[status] ?? (status >= 500 ? 'Something went wrong' : 'That did not work'),
    visitor,
    `<section class="card"><p>${escapeHtml(message)}</p><p class="muted">Error ${status}</p>
     <p><a href="/">Back to the demo</a></p></section>`,
  );
}
