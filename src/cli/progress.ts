/**
 * One self-rewriting progress line on stderr, drawn only when stderr is a terminal:
 * piped into a log or a CI job, long work prints nothing but its result.
 */
export class ProgressLine {
  readonly #stream: NodeJS.WriteStream;
  readonly #enabled: boolean;
  #drawnAt = 0;
  #drawn = false;
  #phase: string | undefined;

  constructor(
    private readonly label: string,
    stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.#stream = stream;
    this.#enabled = stream.isTTY === true && process.env.TERM !== 'dumb';
  }

  /**
   * Redraws (at most ten times a second; always at 100 % and on a new phase);
   * `total` undefined draws a counter instead of a bar.
   */
  update(done: number, total?: number, phase?: string): void {
    if (!this.#enabled) return;
    const now = performance.now();
    const complete = total !== undefined && done >= total;
    const sameLine = this.#drawn && phase === this.#phase;
    if (sameLine && !complete && now - this.#drawnAt < 100) return;
    this.#phase = phase;
    this.#drawnAt = now;
    this.#drawn = true;
    const width = this.#stream.columns || 80;
    const head = phase ? `${this.label}: ${phase}` : this.label;
    let line = head;
    if (total !== undefined && total > 0) {
      const share = Math.min(1, done / total);
      const bar = 24;
      const filled = Math.round(share * bar);
      line += ` [${'#'.repeat(filled)}${'-'.repeat(bar - filled)}] ${String(Math.floor(share * 100)).padStart(3)}% ${count(done)}/${count(total)}`;
    } else if (done > 0) {
      line += ` ${count(done)}`;
    }
    // \r back to the start, \x1b[K erases what a longer previous line left.
    this.#stream.write(`\r${line.slice(0, width - 1)}\x1b[K`);
  }

  /** Erases the line, so the result printed next stands alone. */
  clear(): void {
    if (this.#enabled && this.#drawn) this.#stream.write('\r\x1b[K');
    this.#drawn = false;
  }
}

const numbers = new Intl.NumberFormat('en-US');

function count(value: number): string {
  return numbers.format(value);
}
