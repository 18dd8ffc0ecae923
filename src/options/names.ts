import { SessionOptionsError } from '../errors.js';
import type {
  CacheOptions,
  CookieOptions,
  CsrfOptions,
  GcOptions,
  SessionOptions,
} from './types.js';

// Each list is a record over its interface's keys: a new option left out here, or a
// name here that is no option, fails the type check.

/** Every option name `sessions()` knows: anything else is a mistake, reported with the nearest. */
const KNOWN_OPTIONS: readonly string[] = Object.keys({
  database: true,
  tenant: true,
  idleTimeout: true,
  absoluteTimeout: true,
  touchInterval: true,
  rotateInterval: true,
  rotationGrace: true,
  mode: true,
  transaction: true,
  lockTimeout: true,
  maxSize: true,
  maxSessionsPerUser: true,
  saveUninitialized: true,
  durability: true,
  batchWrites: true,
  cookie: true,
  bearer: true,
  csrf: true,
  actor: true,
  statementTimeout: true,
  connectTimeout: true,
  poolSize: true,
  checkSchema: true,
  cache: true,
  touchFlushInterval: true,
  gc: true,
  logger: true,
  key: true,
  maxAge: true,
  httpOnly: true,
  signed: true,
  secure: true,
  sameSite: true,
  overwrite: true,
  rolling: true,
  renew: true,
  autoCommit: true,
  valid: true,
  beforeSave: true,
  genid: true,
  prefix: true,
  externalKey: true,
  encode: true,
  decode: true,
} satisfies Record<keyof SessionOptions, true>);
const KNOWN_COOKIE_OPTIONS: readonly string[] = Object.keys({
  name: true,
  path: true,
  domain: true,
  sameSite: true,
  secure: true,
  hostPrefix: true,
  maxAge: true,
  signed: true,
} satisfies Record<keyof CookieOptions, true>);
const KNOWN_CACHE_OPTIONS: readonly string[] = Object.keys({
  maxEntries: true,
  maxBytes: true,
  heartbeatInterval: true,
  reconnectMinDelay: true,
  reconnectMaxDelay: true,
  listenUrl: true,
} satisfies Record<keyof CacheOptions, true>);
const KNOWN_CSRF_OPTIONS: readonly string[] = Object.keys({
  methods: true,
  header: true,
  field: true,
  formLimit: true,
  ignore: true,
} satisfies Record<keyof CsrfOptions, true>);

const KNOWN_GC_OPTIONS: readonly string[] = Object.keys({
  interval: true,
  batchSize: true,
  maxBatches: true,
} satisfies Record<keyof GcOptions, true>);

/** Refuses every name, at the top level and in the nested objects, that is no option. */
export function rejectUnknownOptions(given: SessionOptions): void {
  rejectUnknown('', given, KNOWN_OPTIONS);
  rejectUnknown('cookie.', given.cookie, KNOWN_COOKIE_OPTIONS);
  if (given.cache) rejectUnknown('cache.', given.cache, KNOWN_CACHE_OPTIONS);
  if (given.gc) rejectUnknown('gc.', given.gc, KNOWN_GC_OPTIONS);
  if (given.csrf && typeof given.csrf === 'object') {
    rejectUnknown('csrf.', given.csrf, KNOWN_CSRF_OPTIONS);
  }
}

/** Rejects an unknown key of an options object, naming the closest known one. */
function rejectUnknown(prefix: string, value: unknown, known: readonly string[]): void {
  if (value === null || typeof value !== 'object') return;
  for (const name of Object.keys(value)) {
    if (known.includes(name)) continue;
    const nearest = known
      .map((candidate) => ({ candidate, distance: editDistance(name, candidate) }))
      .sort((a, b) => a.distance - b.distance)[0];
    const hint =
      nearest && nearest.distance <= Math.max(3, Math.floor(name.length / 3))
        ? `; did you mean ${prefix}${nearest.candidate}?`
        : '';
    throw new SessionOptionsError(`${prefix}${name}`, `is not an option of pg-sessions${hint}`);
  }
}

/** Levenshtein distance, case-insensitive (option names are short). */
export function editDistance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let previous = Array.from({ length: y.length + 1 }, (_, index) => index);
  for (let i = 1; i <= x.length; i++) {
    const current = [i];
    for (let j = 1; j <= y.length; j++) {
      current[j] = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[y.length]!;
}
