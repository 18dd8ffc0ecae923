import { execFile } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { packAndInstall } from './helpers/package.js';

const execFileAsync = promisify(execFile);

/** What a consumer writes: the API, its errors, ctx.db with its own tables, the testing helper. */
const CONSUMER = `
import Koa from 'koa';
import type { Generated } from 'kysely';
import {
  ReplicaRouter,
  registerPrometheusMetrics,
  SessionConflictError,
  type SessionMiddleware,
  sessions,
} from 'pg-sessions';
import { createTestDatabase, type TestDatabase } from 'pg-sessions/testing';

interface AppDatabase {
  orders: { id: Generated<number>; user_id: string; total_cents: number };
}
declare module 'pg-sessions' {
  interface RequestDatabase extends AppDatabase {}
}

const app = new Koa();
app.keys = ['a long random secret'];
const middleware: SessionMiddleware = sessions({ database: process.env.DATABASE_URL, transaction: 'request' });
app.use(middleware);
app.use(async (ctx) => {
  ctx.session!.views = Number(ctx.session!.views ?? 0) + 1;
  ctx.sessions.bindUser('user-1');
  await ctx.db!.insertInto('orders').values({ user_id: 'user-1', total_cents: 100 }).execute();
  if (ctx.path === '/conflict') throw new SessionConflictError(['cart']);
});
const router = new ReplicaRouter({ hosts: ['postgres://a/app', 'postgres://b/app'] });
app.use(sessions({ database: router }));
await registerPrometheusMetrics(middleware.metrics);
export async function fixture(): Promise<TestDatabase> {
  return createTestDatabase();
}
`;

const WRONG = `
import { sessions } from 'pg-sessions';
sessions({ database: 42 });
`;

test.serial(
  'a consumer with pg-sessions, koa and typescript type-checks with skipLibCheck false, and a wrong option fails',
  async (t) => {
    t.timeout(240_000);
    const dir = await packAndInstall(['koa', 'typescript']);
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const compilerOptions = {
      target: 'ES2022',
      module: 'NodeNext',
      moduleResolution: 'NodeNext',
      strict: true,
      skipLibCheck: false,
      noEmit: true,
    };
    await writeFile(join(dir, 'consumer.ts'), CONSUMER);
    await writeFile(join(dir, 'wrong.ts'), WRONG);
    await writeFile(
      join(dir, 'tsconfig.json'),
      JSON.stringify({ compilerOptions, files: ['consumer.ts'] }),
    );
    await writeFile(
      join(dir, 'tsconfig.wrong.json'),
      JSON.stringify({ compilerOptions, files: ['wrong.ts'] }),
    );
    const tsc = join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
    const compile = (project: string) =>
      execFileAsync(process.execPath, [tsc, '-p', project], { cwd: dir }).then(
        () => ({ code: 0, output: '' }),
        (error: { code?: number; stdout?: string }) => ({
          code: error.code ?? -1,
          output: error.stdout ?? '',
        }),
      );

    const consumer = await compile('tsconfig.json');
    t.is(consumer.output, '', 'the consumer compiles, declarations of node_modules included');
    t.is(consumer.code, 0);

    const wrong = await compile('tsconfig.wrong.json');
    t.not(wrong.code, 0);
    const errors = wrong.output.split('\n').filter((line) => /error TS\d+/.test(line));
    t.true(errors.length > 0);
    for (const line of errors)
      t.regex(line, /^wrong\.ts\(3,/, 'only the wrong option fails, nothing in node_modules');
    t.regex(wrong.output, /number/);
  },
);
