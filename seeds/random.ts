/**
 * A small seeded PRNG (mulberry32: 32-bit state, full period 2^32, passes the usual
 * statistical batteries for this kind of use) and the draws the generator needs.
 * Not for secrets: for the same seed it yields the same numbers everywhere.
 */
export class Random {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A generator for a tuple of integers (seed, tenant, user…), independent of draw order. */
  static derive(...parts: readonly number[]): Random {
    let hash = 0x811c9dc5;
    for (const part of parts) {
      // FNV-1a over the four bytes of each part.
      for (let shift = 0; shift < 32; shift += 8) {
        hash ^= (part >>> shift) & 0xff;
        hash = Math.imul(hash, 0x01000193);
      }
    }
    return new Random(hash);
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)] as T;
  }

  /** An index drawn in proportion to the weights. */
  weighted(weights: readonly number[]): number {
    let total = 0;
    for (const weight of weights) total += weight;
    let target = this.next() * total;
    for (let index = 0; index < weights.length; index++) {
      target -= weights[index] as number;
      if (target < 0) return index;
    }
    return weights.length - 1;
  }

  /** A version-4-shaped UUID from 128 drawn bits. */
  uuid(): string {
    const bytes = new Uint8Array(16);
    for (let index = 0; index < 16; index += 4) {
      const word = Math.floor(this.next() * 4294967296);
      bytes[index] = word >>> 24;
      bytes[index + 1] = (word >>> 16) & 0xff;
      bytes[index + 2] = (word >>> 8) & 0xff;
      bytes[index + 3] = word & 0xff;
    }
    bytes[6] = ((bytes[6] as number) & 0x0f) | 0x40;
    bytes[8] = ((bytes[8] as number) & 0x3f) | 0x80;
    const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }
}
