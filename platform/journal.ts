/**
 * An append-only journal of JSON records, each given the next sequence number,
 * in segment files `<dir>/<first seq, 16 digits>.jsonl`, one record a line:
 * `{"seq":N,…record}`.
 *
 * Appends resolve only once their line is fsynced. Commits are grouped:
 * whatever is appended while one write+fsync runs goes into the next, so
 * concurrent writers share one fsync (`fsync: 'each'` turns grouping off, for
 * comparison). A crash mid-write leaves a torn last line that was never
 * acknowledged; opening the journal cuts it off.
 *
 * `trim(n)` deletes whole segments whose records all have seq <= n: what a
 * reader (an upstream, a courier's acknowledgement) no longer needs. The
 * sequence never restarts: an empty journal remembers its next seq in the
 * name of its newest segment.
 */
import { open, mkdir, readdir, readFile, rm, stat, truncate, type FileHandle } from 'node:fs/promises';
import { writeSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncDir } from './fsx.js';

export interface JournalOptions {
  /** A segment is closed and the next begun once it is at least this large. */
  segmentBytes?: number;
  /** 'group' (default): concurrent appends share an fsync. 'each': one write+fsync per append call. */
  fsync?: 'group' | 'each';
}

export type Entry<T> = T & { seq: number };

type Job =
  | { lines: string[]; resolve: (firstSeq: number) => void; reject: (e: unknown) => void }
  | { exclusive: () => Promise<void>; resolve: () => void; reject: (e: unknown) => void };

const isAppend = (j: Job): j is Extract<Job, { lines: string[] }> => 'lines' in j;

interface Segment {
  first: number;
  path: string;
  /** Its size on disk, kept current by commit (complete lines only). */
  bytes: number;
}

const SEGMENT = /^(\d{16})\.jsonl$/;
const nameOf = (first: number) => `${String(first).padStart(16, '0')}.jsonl`;

const SEQ_PREFIX = Buffer.from('{"seq":');
/** A line's seq, read from the `{"seq":N,` that commit() writes first (the whole line parsed otherwise). */
function seqOf(line: Buffer): number {
  if (line.subarray(0, SEQ_PREFIX.length).equals(SEQ_PREFIX)) {
    let n = 0;
    for (let i = SEQ_PREFIX.length; i < line.length && i < SEQ_PREFIX.length + 17; i++) {
      const c = line[i]!;
      if (c === 0x2c) return n; // ','
      if (c < 0x30 || c > 0x39) break;
      n = n * 10 + (c - 0x30);
    }
  }
  return (JSON.parse(line.toString('utf8')) as { seq: number }).seq;
}

export class Journal<T extends object> {
  private segments: Segment[] = [];
  /** The sum of the segments' sizes. */
  private heldBytes = 0;
  private current: { seg: Segment; fh: FileHandle } | undefined;
  private nextSeq = 1;
  private queue: Job[] = [];
  private draining = false;
  private closed = false;
  /** Where the last read stopped, so a sequential reader does not rescan its segment. */
  private cursor: { seq: number; path: string; offset: number } | undefined;
  readonly segmentBytes: number;
  readonly fsyncMode: 'group' | 'each';

  private constructor(
    readonly dir: string,
    o: JournalOptions,
  ) {
    this.segmentBytes = o.segmentBytes ?? 8 * 1024 * 1024;
    this.fsyncMode = o.fsync ?? 'group';
  }

  static async open<T extends object>(dir: string, o: JournalOptions = {}): Promise<Journal<T>> {
    const j = new Journal<T>(dir, o);
    await j.load();
    return j;
  }

  /** Highest seq durably written (0 when nothing ever was). */
  get head(): number {
    return this.nextSeq - 1;
  }

  /** Lowest seq still held (head + 1 when empty). */
  get tail(): number {
    return this.segments[0]?.first ?? this.nextSeq;
  }

  private async load(): Promise<void> {
    const made = await mkdir(this.dir, { recursive: true });
    if (made !== undefined) await fsyncDir(join(this.dir, '..'));
    for (const name of await readdir(this.dir)) {
      const m = SEGMENT.exec(name);
      if (m) {
        const path = join(this.dir, name);
        const bytes = (await stat(path)).size;
        this.segments.push({ first: Number(m[1]), path, bytes });
        this.heldBytes += bytes;
      } else if (name.endsWith('.tmp')) await rm(join(this.dir, name), { force: true });
    }
    this.segments.sort((a, b) => a.first - b.first);
    const last = this.segments.at(-1);
    if (!last) return;
    if (last.bytes === 0) {
      this.nextSeq = last.first;
      return;
    }
    // The last complete line names the head; anything after it is a torn, unacknowledged write.
    const text = await readFile(last.path, 'utf8');
    const end = text.lastIndexOf('\n');
    if (end + 1 !== Buffer.byteLength(text)) {
      const whole = Buffer.byteLength(text.slice(0, end + 1));
      await truncate(last.path, whole);
      this.heldBytes -= last.bytes - whole;
      last.bytes = whole;
    }
    if (end < 0) {
      this.nextSeq = last.first;
      return;
    }
    const lastLine = text.slice(text.lastIndexOf('\n', end - 1) + 1, end);
    const seq = (JSON.parse(lastLine) as { seq: unknown }).seq;
    if (!Number.isSafeInteger(seq) || (seq as number) < last.first)
      throw new Error(`${last.path}: last record has no valid seq`);
    this.nextSeq = (seq as number) + 1;
  }

  /** Appends records; resolves with their seqs once they are durable. */
  append(records: T[]): Promise<number[]> {
    if (this.closed) return Promise.reject(new Error('journal is closed'));
    if (records.length === 0) return Promise.resolve([]);
    return new Promise<number>((resolve, reject) => {
      const lines = records.map((r) => JSON.stringify(r));
      this.queue.push({ lines, resolve, reject });
      if (!this.draining) void this.drain();
    }).then((first) => records.map((_, i) => first + i));
  }

  /** Runs `fn` alone: after the appends queued before it, before those queued after. */
  private exclusive(fn: () => Promise<void>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ exclusive: fn, resolve, reject });
      if (!this.draining) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length) {
        const head = this.queue[0]!;
        if (!isAppend(head)) {
          this.queue.shift();
          await head.exclusive().then(head.resolve, head.reject);
          continue;
        }
        let n = 1;
        if (this.fsyncMode === 'group') while (n < this.queue.length && isAppend(this.queue[n]!)) n++;
        const jobs = this.queue.splice(0, n).filter(isAppend);
        try {
          const first = await this.commit(jobs.flatMap((j) => j.lines));
          let seq = first;
          for (const j of jobs) {
            j.resolve(seq);
            seq += j.lines.length;
          }
        } catch (e) {
          jobs.forEach((j) => j.reject(e));
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private async commit(lines: string[]): Promise<number> {
    const first = this.nextSeq;
    const cur = await this.writable();
    const text = lines.map((l, i) => `{"seq":${first + i},${l.slice(1)}\n`).join('');
    const bytes = Buffer.from(text, 'utf8');
    try {
      // The write (into the page cache: tens of µs for a group) is made from the main thread: queued in
      // libuv's thread pool it would wait behind whatever else is queued there (node:crypto signature
      // checks, where a service runs without sodium-native), and the whole group's acknowledgement with
      // it. Only the fsync, which can take milliseconds, goes there.
      for (let off = 0; off < bytes.length;) off += writeSync(cur.fh.fd, bytes, off);
      await cur.fh.sync();
    } catch (e) {
      // A partial (or unsynced) write must not prefix the next line: the next writable() reopens the
      // segment and cuts it back to its last acknowledged line first.
      await cur.fh.close().catch(() => undefined);
      this.current = undefined;
      throw e;
    }
    cur.seg.bytes += bytes.length;
    this.heldBytes += bytes.length;
    this.nextSeq += lines.length;
    return first;
  }

  /** The segment to append to, rolling to a new one when the current is full. */
  private async writable(): Promise<{ seg: Segment; fh: FileHandle }> {
    if (this.current && this.current.seg.bytes < this.segmentBytes) return this.current;
    if (this.current) {
      await this.current.fh.close();
      this.current = undefined;
    }
    const last = this.segments.at(-1);
    if (last && last.bytes < this.segmentBytes) {
      // After a failed commit: cut whatever it left past the last complete line before appending again.
      if ((await stat(last.path)).size > last.bytes) await truncate(last.path, last.bytes);
      return (this.current = { seg: last, fh: await open(last.path, 'a', 0o644) });
    }
    const seg = { first: this.nextSeq, path: join(this.dir, nameOf(this.nextSeq)), bytes: 0 };
    const fh = await open(seg.path, 'a', 0o644);
    await fsyncDir(this.dir);
    this.segments.push(seg);
    return (this.current = { seg, fh });
  }

  /**
   * Records with seq >= from, in order, at most `maxRecords` of them and about
   * `maxBytes` of lines (always at least one record when there is one).
   */
  read(from: number, limits: { maxRecords?: number; maxBytes?: number } = {}): Promise<Entry<T>[]> {
    return this.scan(from, limits, true);
  }

  /** The first record with seq >= from, leaving a sequential reader's place as it was. */
  async peek(from: number): Promise<Entry<T> | undefined> {
    return (await this.scan(from, { maxRecords: 1, maxBytes: 64 * 1024 }, false))[0];
  }

  private async scan(
    from: number,
    limits: { maxRecords?: number; maxBytes?: number },
    moveCursor: boolean,
  ): Promise<Entry<T>[]> {
    const maxRecords = limits.maxRecords ?? 1000;
    const maxBytes = limits.maxBytes ?? 1024 * 1024;
    from = Math.max(from, this.tail);
    const out: Entry<T>[] = [];
    if (from > this.head) return out;
    let bytes = 0;
    let done = false;
    let idx = this.segmentIndexOf(from);
    let offset =
      this.cursor && this.cursor.seq === from && this.cursor.path === this.segments[idx]?.path
        ? this.cursor.offset
        : 0;
    while (!done && idx < this.segments.length && out.length < maxRecords && bytes < maxBytes) {
      const seg = this.segments[idx]!;
      const fh = await open(seg.path, 'r').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined; // trimmed meanwhile
        throw e;
      });
      if (!fh) break;
      try {
        const buf = Buffer.alloc(Math.min(maxBytes + 256 * 1024, 4 * 1024 * 1024));
        let pending = Buffer.alloc(0);
        let pos = offset;
        while (!done) {
          const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
          if (bytesRead === 0) break;
          pos += bytesRead;
          let data = pending.length
            ? Buffer.concat([pending, buf.subarray(0, bytesRead)])
            : buf.subarray(0, bytesRead);
          let start = 0;
          for (;;) {
            const nl = data.indexOf(0x0a, start);
            if (nl < 0) break;
            const lineStart = offset;
            const line = data.subarray(start, nl);
            offset += nl + 1 - start;
            start = nl + 1;
            if (seqOf(line) < from) continue; // skipped without parsing the record
            const e = JSON.parse(line.toString('utf8')) as Entry<T>;
            if (e.seq > this.head) {
              done = true; // being written right now: not durable yet
              break;
            }
            if (out.length >= maxRecords || (out.length > 0 && bytes + line.length > maxBytes)) {
              if (moveCursor) this.cursor = { seq: e.seq, path: seg.path, offset: lineStart };
              return out;
            }
            out.push(e);
            bytes += line.length + 1;
          }
          pending = Buffer.from(data.subarray(start));
          data = Buffer.alloc(0);
          if (out.length >= maxRecords || bytes >= maxBytes) break;
        }
      } finally {
        await fh.close();
      }
      const lastSeq = out.at(-1)?.seq;
      if (moveCursor)
        this.cursor = lastSeq !== undefined ? { seq: lastSeq + 1, path: seg.path, offset } : undefined;
      if (out.length >= maxRecords || bytes >= maxBytes) break;
      idx++;
      offset = 0;
    }
    return out;
  }

  private segmentIndexOf(seq: number): number {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.first <= seq) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /**
   * Deletes every segment whose records all have seq <= upTo. When that is
   * all of them, an empty segment named for the next seq takes their place.
   */
  trim(upTo: number): Promise<number> {
    let removed = 0;
    return this.exclusive(async () => {
      const gone: Segment[] = [];
      while (this.segments.length > 1 && this.segments[1]!.first - 1 <= upTo)
        gone.push(this.segments.shift()!);
      const last = this.segments.at(-1);
      if (last && upTo >= this.head && this.head >= last.first) {
        if (this.current) await this.current.fh.close();
        this.current = undefined;
        const seg = { first: this.nextSeq, path: join(this.dir, nameOf(this.nextSeq)), bytes: 0 };
        await (await open(seg.path, 'a', 0o644)).close();
        this.segments = [seg];
        gone.push(last);
      }
      for (const seg of gone) {
        if (this.cursor?.path === seg.path) this.cursor = undefined;
        await rm(seg.path, { force: true });
        this.heldBytes -= seg.bytes;
      }
      removed = gone.length;
      if (removed) await fsyncDir(this.dir);
    }).then(() => removed);
  }

  /** Bytes held on disk (whole segments: trimmed only once every record in one is). */
  get bytes(): number {
    return this.heldBytes;
  }

  /** Waits for queued appends, then closes the open segment. */
  async close(): Promise<void> {
    this.closed = true;
    await this.exclusive(async () => {
      await this.current?.fh.close();
      this.current = undefined;
    });
  }
}
