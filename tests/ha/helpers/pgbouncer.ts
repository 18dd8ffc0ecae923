import { chown, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from '../../../src/testing/free-port.js';
import { unprivilegedUser } from '../../../src/testing/os-user.js';
import { ownedFolder, ServerProcess } from './processes.js';

export interface PgBouncerOptions {
  /** The PostgreSQL server behind it. */
  readonly host: string;
  readonly port: number;
  readonly database: string;
  /** Login roles allowed through (trust: the server behind trusts loopback too). */
  readonly users: readonly string[];
  /** Server connections per user and database. @default 2 */
  readonly poolSize?: number;
}

/** Debian's pgbouncer in transaction pooling on a loopback port, as the unprivileged user. */
export class PgBouncer {
  private constructor(
    readonly port: number,
    readonly database: string,
    private readonly process: ServerProcess,
    private readonly folder: string,
  ) {}

  static async start(options: PgBouncerOptions): Promise<PgBouncer> {
    const folder = await ownedFolder('pgbouncer-');
    const port = await freePort();
    const ini = [
      '[databases]',
      `${options.database} = host=${options.host} port=${options.port} dbname=${options.database}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(folder, 'users.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize ?? 2}`,
      'max_client_conn = 500',
      // node-postgres sends statement_timeout as a startup parameter, which PgBouncer
      // refuses unless told to drop it (set it on the role instead: ALTER ROLE … SET).
      'ignore_startup_parameters = extra_float_digits,statement_timeout',
      'server_reset_query =',
      'admin_users = pgbouncer_admin',
      'stats_users = pgbouncer_admin',
    ].join('\n');
    const users = [...options.users, 'pgbouncer_admin'].map((u) => `"${u}" ""`).join('\n');
    await writeFile(join(folder, 'pgbouncer.ini'), `${ini}\n`, { mode: 0o600 });
    await writeFile(join(folder, 'users.txt'), `${users}\n`, { mode: 0o600 });
    const { uid, gid } = await unprivilegedUser();
    if (uid !== undefined) {
      for (const file of ['pgbouncer.ini', 'users.txt']) {
        await chown(join(folder, file), uid, gid ?? uid);
      }
    }
    const process = await ServerProcess.start('pgbouncer', 'pgbouncer', [
      join(folder, 'pgbouncer.ini'),
    ]);
    const bouncer = new PgBouncer(port, options.database, process, folder);
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await bouncer.admin('SHOW VERSION');
        return bouncer;
      } catch (error) {
        if (!process.running || Date.now() > deadline) {
          await bouncer.stop();
          throw new Error(`pgbouncer did not start:\n${process.logTail}`, { cause: error });
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  url(user: string, password = ''): string {
    const auth = password ? `${user}:${encodeURIComponent(password)}` : user;
    return `postgres://${auth}@127.0.0.1:${this.port}/${this.database}`;
  }

  /** A statement on PgBouncer's admin console (SHOW POOLS, SHOW SERVERS, …). */
  async admin<R extends pg.QueryResultRow = Record<string, unknown>>(
    command: string,
  ): Promise<R[]> {
    const client = new pg.Client({
      connectionString: `postgres://pgbouncer_admin@127.0.0.1:${this.port}/pgbouncer`,
    });
    client.on('error', () => {});
    await client.connect();
    try {
      // No parameters: the simple protocol, the only one the console speaks.
      return (await client.query<R>(command)).rows;
    } finally {
      await client.end().catch(() => {});
    }
  }

  async stop(): Promise<void> {
    await this.process.stop(5_000);
    await rm(this.folder, { recursive: true, force: true });
  }
}
