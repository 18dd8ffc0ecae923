import type { Context } from 'koa';
import type { PresentedToken } from './cookie.js';
import type { StatementRunner } from './db/runner.js';
import type { ConcurrencyMode } from './options.js';
import { Session, snapshotData } from './session.js';
import type { SessionRecord } from './store.js';
import { generateToken } from './token.js';

/** Everything the middleware knows about the session of one request. */
export class RequestState {
  /** The loaded row; undefined for a new session or after the row vanished. */
  record: SessionRecord | undefined;
  /** Materialised on first access of ctx.session (or when loaded). */
  session: Session | undefined;
  /** The token to write back: the presented one, a fresh one, or the rotated one. */
  token: string | undefined;
  /** ctx.session = null or destroy(): the loaded row is deleted at commit. */
  destroyed = false;
  /** ctx.sessions.revoke() hit this very session. */
  revokedSelf = false;
  /** regenerate(): the next write swaps in `token`. */
  rotate = false;
  /** bindUser(): the user to write (null unbinds), undefined when unchanged. */
  pendingUserId: string | null | undefined;
  /** The commit LSN of this request's last write, for read-your-writes on replicas. */
  fence: string | undefined;
  /** The lowest row version this client has seen written (its read-your-writes fence cookie). */
  minVersion = 0;
  /** Statements run in the request's transaction: the cache is neither read nor filled. */
  inTransaction = false;

  constructor(
    readonly ctx: Context,
    readonly tenantId: string,
    readonly mode: ConcurrencyMode,
    readonly presented: PresentedToken,
    public runner: StatementRunner,
  ) {}

  /** ctx.session's value: null once destroyed (until a new session is assigned). */
  currentSession(): Session | null {
    if (this.destroyed && !this.session) return null;
    if (!this.session) {
      this.session = this.record
        ? new Session(this.record.snapshot ?? snapshotData(this.record.data), false)
        : new Session(new Map(), true);
    }
    return this.session;
  }

  /** A brand-new session replaces whatever this request had, with a fresh token. */
  startNewSession(data: Record<string, unknown>): Session {
    if (this.record) this.destroyed = true;
    this.session = new Session(snapshotData(data), true, data);
    this.token = generateToken();
    this.rotate = false;
    return this.session;
  }

  get userId(): string | null {
    if (this.pendingUserId !== undefined) return this.pendingUserId;
    return this.destroyed ? null : (this.record?.userId ?? null);
  }
}
