import { FerryError } from '../errors.js';

const EMPTY = Buffer.alloc(0);

/**
 * Pulls exact byte counts out of a chunked source without copying bodies:
 * headers are copied (512 bytes), bodies are handed out as slices of the
 * source's own chunks, so memory stays flat whatever the entry size.
 */
export class PullReader {
  private cur: Buffer = EMPTY;
  private off = 0;
  private done = false;
  /** Bytes consumed so far (for progress and error offsets). */
  position = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    while (this.off >= this.cur.length) {
      if (this.done) return false;
      const r = await this.source.next();
      if (r.done) {
        this.done = true;
        return false;
      }
      this.cur = r.value;
      this.off = 0;
    }
    return true;
  }

  /** Exactly `n` bytes, or undefined at a clean end (no byte available). Partial = truncated. */
  async readExact(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill())) return undefined;
    if (this.cur.length - this.off >= n) {
      const out = Buffer.from(this.cur.subarray(this.off, this.off + n)); // copy: headers outlive the chunk
      this.off += n;
      this.position += n;
      return out;
    }
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      if (!(await this.fill()))
        throw new FerryError(
          'TAR_TRUNCATED',
          `archive ends in the middle of a block at byte ${this.position}`,
        );
      const take = Math.min(n - got, this.cur.length - this.off);
      this.cur.copy(out, got, this.off, this.off + take);
      this.off += take;
      got += take;
      this.position += take;
    }
    return out;
  }

  /** Yields slices totalling exactly `n` bytes; throws TAR_TRUNCATED if the source ends first. */
  async *slices(n: number, what: string): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill()))
        throw new FerryError('TAR_TRUNCATED', `archive ends inside ${what} (${left} bytes missing)`);
      const take = Math.min(left, this.cur.length - this.off);
      const slice = this.cur.subarray(this.off, this.off + take);
      this.off += take;
      left -= take;
      this.position += take;
      yield slice;
    }
  }

  /** Consumes `n` bytes that must all be zero (block padding). */
  async skipZeros(n: number, what: string): Promise<void> {
    for await (const s of this.slices(n, what)) {
      for (let i = 0; i < s.length; i++)
        if (s[i] !== 0) throw new FerryError('TAR_INVALID', `non-zero bytes in ${what}`);
    }
  }

  /** Consumes the rest of the source, which must be at most `limit` zero bytes. */
  async drainZeros(limit: number, what: string): Promise<void> {
    let seen = 0;
    while (await this.fill()) {
      const s = this.cur.subarray(this.off);
      for (let i = 0; i < s.length; i++)
        if (s[i] !== 0) throw new FerryError('TAR_INVALID', `data after ${what}`);
      seen += s.length;
      this.off = this.cur.length;
      this.position += s.length;
      if (seen > limit) throw new FerryError('TAR_INVALID', `more than ${limit} bytes after ${what}`);
    }
  }

  /** True when the source has no more bytes. */
  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }
}
