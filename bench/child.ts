// The benchmark's child processes: TypeScript entry points run by tsx, each talking to
// the runner over an IPC channel. Every child started here is killed when the runner
// exits, however it exits, and each child exits on its own when the channel closes.
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** A message between the runner and a child: a `type` and whatever it carries. */
export interface Message {
  readonly type: string;
  readonly [field: string]: unknown;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** One child process and its IPC channel. */
export class Child {
  readonly #process: ChildProcess;
  readonly #inbox: Message[] = [];
  readonly #waiting: {
    type: string;
    resolve: (message: Message) => void;
    reject: (error: Error) => void;
  }[] = [];
  readonly #exited: Promise<number | null>;
  #exitCode: number | null | undefined;

  private constructor(child: ChildProcess) {
    this.#process = child;
    child.on('message', (message: Message) => {
      if (message.type === 'error' && this.#waiting.length > 0) {
        // A request the child failed to serve: whoever waits on it would wait forever.
        const error = new Error(`${this.describe()} failed: ${String(message.message)}`);
        for (const waiter of this.#waiting.splice(0)) waiter.reject(error);
        return;
      }
      const index = this.#waiting.findIndex((waiter) => waiter.type === message.type);
      if (index >= 0) this.#waiting.splice(index, 1)[0]?.resolve(message);
      else this.#inbox.push(message);
    });
    this.#exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        live.delete(child);
        this.#exitCode = code;
        resolve(code);
      });
    });
  }

  /**
   * Starts `bench/<script>` with tsx. `nodeOptions` go to node itself (say `--cpu-prof`).
   * Its output goes to the runner's stderr, so the runner's stdout stays the report.
   */
  static start(
    script: string,
    options: { env?: Record<string, string>; nodeOptions?: readonly string[] } = {},
  ): Child {
    const child = fork(fileURLToPath(new URL(script, import.meta.url)), [], {
      execArgv: ['--import', 'tsx', ...(options.nodeOptions ?? [])],
      env: { ...process.env, ...options.env },
      stdio: ['ignore', 2, 'inherit', 'ipc'],
    });
    live.add(child);
    return new Child(child);
  }

  get pid(): number | undefined {
    return this.#process.pid;
  }

  send(message: Message): void {
    this.#process.send(message);
  }

  /** The next message of this type (already received or still to come); fails if the child ends first. */
  next<T extends Message>(type: string, timeoutMs = 120_000): Promise<T> {
    const index = this.#inbox.findIndex((message) => message.type === type);
    if (index >= 0) return Promise.resolve(this.#inbox.splice(index, 1)[0] as T);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.splice(this.#waiting.indexOf(waiter), 1);
        reject(new Error(`${this.describe()} sent no "${type}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = {
        type,
        resolve: (message: Message) => {
          clearTimeout(timer);
          resolve(message as T);
        },
        reject: (error: Error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      this.#waiting.push(waiter);
      void this.#exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${this.describe()} exited (code ${code}) before sending "${type}"`));
      });
    });
  }

  /** Sends a request and waits for the reply of the given type. */
  async ask<T extends Message>(message: Message, replyType: string): Promise<T> {
    const reply = this.next<T>(replyType);
    this.send(message);
    return reply;
  }

  /** Asks the child to stop (closing the channel), then SIGTERM, then SIGKILL. */
  async stop(): Promise<number | null> {
    if (this.#exitCode !== undefined) return this.#exitCode;
    if (this.#process.connected) this.#process.disconnect();
    const escalate = setTimeout(() => this.#process.kill('SIGTERM'), 10_000);
    const kill = setTimeout(() => this.#process.kill('SIGKILL'), 15_000);
    const code = await this.#exited;
    clearTimeout(escalate);
    clearTimeout(kill);
    return code;
  }

  private describe(): string {
    return `child ${this.#process.spawnargs.slice(-1)[0] ?? ''} (pid ${this.#process.pid})`;
  }
}

/** In a child: calls `handler` for each message from the runner, and `shutdown` once the runner goes away. */
export function serveRunner(
  handler: (message: Message) => Promise<Message | undefined> | Message | undefined,
  shutdown: () => Promise<void>,
): void {
  if (!process.send) throw new Error('start this file from the benchmark runner (npm run bench)');
  process.on('message', (message: Message) => {
    void Promise.resolve(handler(message)).then(
      (reply) => {
        if (reply) process.send?.(reply);
      },
      (error: unknown) => {
        process.send?.({ type: 'error', message: String(error) });
      },
    );
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    shutdown().then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`shutdown failed: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.once('disconnect', stop);
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** In a child: tells the runner something. */
export function tellRunner(message: Message): void {
  process.send?.(message);
}
