/**
 * The agent's telemetry outbox: a durable, bounded queue under
 * `<stateDir>/outbox/`. Each entry is one file, written atomically (temp +
 * fsync + rename + fsync dir) and named by a zero-padded sequence and its kind:
 * `0000000000000042.heartbeat`. Sequences only grow, across restarts too: the
 * highest acknowledged one is kept in `acked`.
 *
 * Bounds (entries and bytes): when an append would break them, the oldest
 * heartbeats are dropped first. Results and update outcomes are never dropped:
 * when only they remain, a new heartbeat is refused, and so is a new result
 * (the caller keeps it and retries; nothing is lost silently).
 *
 * Open ignores and removes temp files a crash left (`.<name>.<rand>.tmp`).
 */
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../platform/fsx.js';

export type OutboxKind = 'heartbeat' | 'result' | 'update';

export interface OutboxEntry {
  seq: number;
  kind: OutboxKind;
  bytes: Buffer;
}

export interface OutboxLimits {
  maxEntries: number;
  maxBytes: number;
}

export const DEFAULT_OUTBOX_LIMITS: OutboxLimits = { maxEntries: 10_000, maxBytes: 64 * 1024 * 1024 };

export type AppendResult =
  { ok: true; seq: number; dropped: number[] } | { ok: false; reason: 'full' | 'too_large' };

interface Meta {
  seq: number;
  kind: OutboxKind;
  size: number;
}

const NAME = /^(\d{16})\.(heartbeat|result|update)$/;
const TEMP = /^\..*\.tmp$/;
const ACKED = 'acked';
const nameOf = (m: Pick<Meta, 'seq' | 'kind'>) => `${String(m.seq).padStart(16, '0')}.${m.kind}`;

/** One queued entry as listed on disk (read-only: nothing is removed or opened for writing). */
export interface OutboxListing {
  seq: number;
  kind: OutboxKind;
  size: number;
  mtimeMs: number;
}

/** The queue under `<stateDir>/outbox` as it stands, oldest first, and its torn temp files. */
export async function listOutbox(stateDir: string): Promise<{ entries: OutboxListing[]; temps: string[] }> {
  const dir = join(stateDir, 'outbox');
  const entries: OutboxListing[] = [];
  const temps: string[] = [];
  for (const name of await readdir(dir).catch(() => [])) {
    if (TEMP.test(name)) temps.push(join(dir, name));
    const m = NAME.exec(name);
    if (!m) continue;
    const st = await stat(join(dir, name)).catch(() => undefined);
    if (st) entries.push({ seq: Number(m[1]), kind: m[2] as OutboxKind, size: st.size, mtimeMs: st.mtimeMs });
  }
  return { entries: entries.sort((a, b) => a.seq - b.seq), temps };
}

/**
 * The queue's own rule for a queue over its bounds: the oldest heartbeats go
 * first; results and update outcomes are never dropped. Returns the sequences
 * to drop, and whether that brings the queue within its bounds.
 */
export function compactionPlan(
  entries: readonly Pick<Meta, 'seq' | 'kind' | 'size'>[],
  limits: OutboxLimits = DEFAULT_OUTBOX_LIMITS,
): { drop: number[]; fits: boolean } {
  let kept = [...entries].sort((a, b) => a.seq - b.seq);
  const over = (l: typeof kept) =>
    l.length > limits.maxEntries || l.reduce((n, e) => n + e.size, 0) > limits.maxBytes;
  const drop: number[] = [];
  while (over(kept)) {
    const oldest = kept.find((e) => e.kind === 'heartbeat');
    if (!oldest) return { drop, fits: false };
    drop.push(oldest.seq);
    kept = kept.filter((e) => e !== oldest);
  }
  return { drop, fits: true };
}

export class AgentOutbox {
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly dir: string,
    private readonly limits: OutboxLimits,
    private entries: Meta[],
    private nextSeq: number,
    private acked: number,
  ) {}

  /** Opens `<stateDir>/outbox`, removing torn temp files and indexing what is queued. */
  static async open(stateDir: string, limits: Partial<OutboxLimits> = {}): Promise<AgentOutbox> {
    const dir = join(stateDir, 'outbox');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const entries: Meta[] = [];
    let removed = false;
    for (const name of await readdir(dir)) {
      if (TEMP.test(name)) {
        await rm(join(dir, name), { force: true });
        removed = true;
        continue;
      }
      const m = NAME.exec(name);
      if (!m) continue; // not ours: left alone
      const st = await stat(join(dir, name));
      entries.push({ seq: Number(m[1]), kind: m[2] as OutboxKind, size: st.size });
    }
    if (removed) await fsyncDir(dir);
    entries.sort((a, b) => a.seq - b.seq);
    const acked = await readFile(join(dir, ACKED), 'utf8').then(
      (t) => (/^\d+\n?$/.test(t) ? Number(t.trim()) : 0),
      () => 0,
    );
    const highest = Math.max(acked, entries.at(-1)?.seq ?? 0);
    return new AgentOutbox(dir, { ...DEFAULT_OUTBOX_LIMITS, ...limits }, entries, highest + 1, acked);
  }

  /** Entries queued and their total bytes. */
  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.length, bytes: this.entries.reduce((n, e) => n + e.size, 0) };
  }

  /** Queues one envelope durably; resolves once it is on disk. */
  append(kind: OutboxKind, envelopeBytes: Uint8Array): Promise<AppendResult> {
    return this.serial(async () => {
      const size = envelopeBytes.length;
      if (size > this.limits.maxBytes) return { ok: false, reason: 'too_large' };
      const fits = (entries: Meta[]) =>
        entries.length + 1 <= this.limits.maxEntries &&
        entries.reduce((n, e) => n + e.size, 0) + size <= this.limits.maxBytes;
      // Compaction plan: drop the oldest heartbeats until the new entry fits, or refuse.
      let kept = this.entries;
      const drop: Meta[] = [];
      while (!fits(kept)) {
        const oldest = kept.find((e) => e.kind === 'heartbeat');
        if (!oldest) return { ok: false, reason: 'full' };
        drop.push(oldest);
        kept = kept.filter((e) => e !== oldest);
      }
      const meta: Meta = { seq: this.nextSeq, kind, size };
      // Write first, then drop: a crash in between leaves the queue over its bound, never short.
      await writeFileAtomic(join(this.dir, nameOf(meta)), envelopeBytes, { mode: 0o600 });
      this.nextSeq++;
      this.entries = [...kept, meta];
      if (drop.length) await this.remove(drop);
      return { ok: true, seq: meta.seq, dropped: drop.map((d) => d.seq) };
    });
  }

  /** Brings a queue over its bounds back within them by compactionPlan; returns the sequences dropped. */
  compact(): Promise<number[]> {
    return this.serial(async () => {
      const { drop } = compactionPlan(this.entries, this.limits);
      const seqs = new Set(drop);
      if (drop.length) await this.remove(this.entries.filter((e) => seqs.has(e.seq)));
      return drop;
    });
  }

  /** Up to `n` entries, oldest first. */
  peek(n: number): Promise<OutboxEntry[]> {
    return this.serial(async () => {
      const out: OutboxEntry[] = [];
      for (const m of this.entries.slice(0, Math.max(0, n)))
        out.push({ seq: m.seq, kind: m.kind, bytes: await readFile(join(this.dir, nameOf(m))) });
      return out;
    });
  }

  /** Removes every entry with seq ≤ upToSeq (delivered); returns how many. */
  ack(upToSeq: number): Promise<number> {
    return this.serial(async () => {
      const gone = this.entries.filter((e) => e.seq <= upToSeq);
      // Record the high-water mark first so sequences never repeat, even when the queue empties.
      const mark = Math.max(this.acked, Math.min(upToSeq, this.nextSeq - 1));
      if (mark !== this.acked) {
        await writeFileAtomic(join(this.dir, ACKED), `${mark}\n`, { mode: 0o600 });
        this.acked = mark;
      }
      this.entries = this.entries.filter((e) => e.seq > upToSeq);
      if (gone.length) await this.remove(gone);
      return gone.length;
    });
  }

  private async remove(metas: Meta[]): Promise<void> {
    const seqs = new Set(metas.map((m) => m.seq));
    this.entries = this.entries.filter((e) => !seqs.has(e.seq));
    for (const m of metas) await rm(join(this.dir, nameOf(m)), { force: true });
    await fsyncDir(this.dir);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }
}
