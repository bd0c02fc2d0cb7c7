/**
 * What this mirror has already taken into custody from each mirror it relays
 * for: the parts of that mirror's sequence (from..to of its signed batches)
 * held in `<data>/telemetry/relayed.json` (atomic writes). A batch whose range
 * is already covered is a replay: acknowledged, not stored a second time, so a
 * sender that lost our answer can retry and an attacker that recorded a batch
 * cannot grow the outbox with it.
 *
 * Written after the outbox append is durable: a crash between the two lets one
 * replay through once, which the server recognises by the same ranges.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CarriedBatch } from '../core/telemetry.js';
import { writeFileAtomic } from '../platform/fsx.js';

type Range = [number, number];

/** One batch as checked by the relay route: its origin and the range it covers. */
export interface CheckedBatch {
  origin: string;
  from: number;
  to: number;
  batch: CarriedBatch;
}

/** Ranges per origin kept merged; a mirror's batches are contiguous, so lists stay short. */
function addRange(list: Range[], from: number, to: number): Range[] {
  const all = [...list, [from, to] as Range].sort((a, b) => a[0] - b[0]);
  const out: Range[] = [];
  for (const r of all) {
    const last = out.at(-1);
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

const covers = (list: readonly Range[], from: number, to: number) =>
  list.some(([a, b]) => a <= from && to <= b);

export class RelaySeen {
  readonly path: string;
  private seen: Map<string, Range[]> | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly dataDir: string) {
    this.path = join(dataDir, 'telemetry', 'relayed.json');
  }

  private async load(): Promise<Map<string, Range[]>> {
    if (this.seen) return this.seen;
    const text = await readFile(this.path, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    const map = new Map<string, Range[]>();
    if (text !== undefined) {
      const v = JSON.parse(text) as { mirrors?: Record<string, Range[]> };
      for (const [id, ranges] of Object.entries(v.mirrors ?? {})) map.set(id, ranges);
    }
    return (this.seen = map);
  }

  /**
   * Stores (with `append`) the batches not taken before, one call at a time; answers how many were
   * stored and how many were replays.
   */
  take(
    batches: CheckedBatch[],
    append: (fresh: CarriedBatch[]) => Promise<unknown>,
  ): Promise<{ stored: number; duplicates: number }> {
    const run = this.queue.then(async () => {
      const seen = await this.load();
      const next = new Map(seen);
      const fresh: CarriedBatch[] = [];
      for (const b of batches) {
        const ranges = next.get(b.origin) ?? [];
        if (covers(ranges, b.from, b.to)) continue;
        next.set(b.origin, addRange(ranges, b.from, b.to));
        fresh.push(b.batch);
      }
      if (fresh.length) {
        await append(fresh);
        await mkdir(join(this.dataDir, 'telemetry'), { recursive: true });
        await writeFileAtomic(this.path, JSON.stringify({ mirrors: Object.fromEntries(next) }) + '\n');
        this.seen = next;
      }
      return { stored: fresh.length, duplicates: batches.length - fresh.length };
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}
