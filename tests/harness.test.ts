import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import pg from 'pg';
import { PostgresServer } from '../src/testing/index.js';

test('a server starts on a free loopback port, runs unprivileged, and destroy removes it', async (t) => {
  const server = await PostgresServer.start();
  const client = new pg.Client(server.url());
  await client.connect();
  const result = await client.query(
    `SELECT host(inet_server_addr()) AS address, current_setting('data_directory') AS dir`,
  );
  await client.end();
  t.is(result.rows[0].address, '127.0.0.1');
  t.true(server.port > 0);
  if (process.getuid?.() === 0) {
    const { stdout } = await import('node:child_process').then(({ execFileSync }) => ({
      stdout: execFileSync('ps', ['-o', 'user=', '-p', String(server.pid)])
        .toString()
        .trim(),
    }));
    t.not(stdout, 'root', 'postgres runs as an unprivileged user');
  }
  await server.destroy();
  t.false(existsSync(server.dataDir));
  t.false(server.running);
});

test('when the test process is killed, its server is stopped and its folder removed', async (t) => {
  const script = `
    import { PostgresServer } from ${JSON.stringify(fileURLToPath(new URL('../src/testing/index.ts', import.meta.url)))};
    const server = await PostgresServer.start();
    console.log(JSON.stringify({ pid: server.pid, dataDir: server.dataDir }));
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve) => {
    child.stdout.once('data', (chunk: Buffer) => resolve(chunk.toString()));
  });
  const { pid, dataDir } = JSON.parse(line) as { pid: number; dataDir: string };
  t.true(existsSync(dataDir));
  child.kill('SIGKILL');
  const deadline = Date.now() + 10_000;
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  while (Date.now() < deadline && (alive() || existsSync(dataDir))) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.false(alive(), 'the postmaster is gone');
  t.false(existsSync(dataDir), 'the data folder is removed');
});
