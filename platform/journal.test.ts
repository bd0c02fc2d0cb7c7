import { appendFile, mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Journal } from './journal.js';

let dir: string;
beforeEach(async () => {
  dir = join(await mkdtemp(join(tmpdir(), 'ferry-journal-')), 'j');
});
afterEach(async () => {
  await rm(join(dir, '..'), { recursive: true, force: true });
});

type Rec = { n: number; pad?: string };

async function readAll(j: Journal<Rec>, from = 1, maxRecords = 7): Promise<number[]> {
  const seen: number[] = [];
  for (let next = from; ;) {
    const batch = await j.read(next, { maxRecords });
    if (!batch.length) return seen;
    for (const e of batch) seen.push(e.seq);
    next = batch.at(-1)!.seq + 1;
  }
}

describe('Journal', () => {
  it('gives concurrent appends contiguous seqs and shares fsyncs between them', async () => {
    const j = await Journal.open<Rec>(dir, { segmentBytes: 2048 });
    const all = await Promise.all(
      Array.from({ length: 50 }, (_, i) => j.append([{ n: i }, { n: i + 1000 }])),
    );
    const seqs = all.flat().sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(j.head).toBe(100);
    // each record is on disk under the seq its append was told
    const byN = new Map((await j.read(1, { maxRecords: 1000, maxBytes: 1e9 })).map((e) => [e.n, e.seq]));
    all.forEach((seqPair, i) => {
      expect(byN.get(i)).toBe(seqPair[0]);
      expect(byN.get(i + 1000)).toBe(seqPair[1]);
    });
    await j.close();
  });

  it('reads in order across segments, within limits, resuming where it stopped', async () => {
    const j = await Journal.open<Rec>(dir, { segmentBytes: 300 });
    for (let i = 0; i < 40; i++) await j.append([{ n: i, pad: 'x'.repeat(i) }]);
    expect(await readAll(j)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(await readAll(j, 17, 3)).toEqual(Array.from({ length: 24 }, (_, i) => i + 17));
    const small = await j.read(1, { maxBytes: 10 });
    expect(small.map((e) => e.seq)).toEqual([1]); // at least one record
    expect(await j.read(41)).toEqual([]);
    await j.close();
  });

  it('keeps its head across reopen and cuts a torn last line', async () => {
    let j = await Journal.open<Rec>(dir);
    await j.append([{ n: 1 }, { n: 2 }, { n: 3 }]);
    await j.close();
    const [seg] = await readdir(dir);
    await appendFile(join(dir, seg!), '{"seq":4,"n":'); // a crash mid-append, never acknowledged
    j = await Journal.open<Rec>(dir);
    expect(j.head).toBe(3);
    expect(await readFile(join(dir, seg!), 'utf8')).toMatch(/"n":3}\n$/);
    expect(await j.append([{ n: 4 }])).toEqual([4]);
    expect(await readAll(j)).toEqual([1, 2, 3, 4]);
    await j.close();
  });

  it('trims whole segments at or below the mark, and never reuses a seq', async () => {
    let j = await Journal.open<Rec>(dir, { segmentBytes: 100 });
    for (let i = 0; i < 20; i++) await j.append([{ n: i }]);
    const before = (await readdir(dir)).length;
    await j.trim(10);
    expect((await readdir(dir)).length).toBeLessThan(before);
    expect(j.tail).toBeLessThanOrEqual(11);
    expect(await readAll(j, 11)).toEqual(Array.from({ length: 10 }, (_, i) => i + 11));
    // reading below the tail starts at the tail
    expect((await j.read(1))[0]!.seq).toBe(j.tail);
    await j.trim(20);
    expect(await j.read(1)).toEqual([]);
    expect(await readdir(dir)).toEqual(['0000000000000021.jsonl']);
    await j.close();
    j = await Journal.open<Rec>(dir, { segmentBytes: 100 });
    expect(j.head).toBe(20);
    expect(await j.append([{ n: 99 }])).toEqual([21]);
    await j.close();
  });

  it('trims while appends are in flight without losing any', async () => {
    const j = await Journal.open<Rec>(dir, { segmentBytes: 200 });
    await j.append([{ n: 0 }]);
    const appends = Array.from({ length: 30 }, (_, i) => j.append([{ n: i + 1 }]));
    const trims = [j.trim(1), j.trim(5), j.trim(9)];
    await Promise.all([...appends, ...trims]);
    const seqs = await readAll(j, 10);
    expect(seqs).toEqual(Array.from({ length: 22 }, (_, i) => i + 10));
    await j.close();
  });

  it("with fsync 'each' commits every append on its own, same results", async () => {
    const j = await Journal.open<Rec>(dir, { fsync: 'each' });
    const all = await Promise.all(Array.from({ length: 10 }, (_, i) => j.append([{ n: i }])));
    expect(all.flat().sort((a, b) => a - b)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    await j.close();
    await expect(j.append([{ n: 1 }])).rejects.toThrow(/closed/);
  });

  it('knows the bytes it holds: across appends, segment rolls, trims and reopen', async () => {
    const onDisk = async () => {
      let n = 0;
      for (const f of await readdir(dir)) n += (await stat(join(dir, f))).size;
      return n;
    };
    let j = await Journal.open<Rec>(dir, { segmentBytes: 120 });
    expect(j.bytes).toBe(0);
    for (let i = 0; i < 25; i++) await j.append([{ n: i, pad: 'y'.repeat(i % 7) }]);
    expect(j.bytes).toBe(await onDisk());
    expect((await readdir(dir)).length).toBeGreaterThan(3);
    await j.trim(12);
    expect(j.bytes).toBe(await onDisk());
    await j.close();
    j = await Journal.open<Rec>(dir, { segmentBytes: 120 });
    expect(j.bytes).toBe(await onDisk());
    await j.trim(25);
    expect(j.bytes).toBe(0);
    await j.close();
  });

  it('peeks at the first record from a seq without moving a sequential reader', async () => {
    const j = await Journal.open<Rec>(dir, { segmentBytes: 200 });
    for (let i = 0; i < 30; i++) await j.append([{ n: i }]);
    const cursorOf = () => (j as unknown as { cursor: unknown }).cursor;
    await j.read(1, { maxRecords: 10 });
    const before = cursorOf();
    expect(before).toMatchObject({ seq: 11 });
    expect(await j.peek(11)).toMatchObject({ seq: 11, n: 10 });
    expect(await j.peek(25)).toMatchObject({ seq: 25, n: 24 });
    expect(await j.peek(31)).toBeUndefined();
    expect(cursorOf()).toEqual(before);
    expect((await j.read(11, { maxRecords: 1 }))[0]).toMatchObject({ seq: 11, n: 10 });
    await j.close();
  });

  it('a commit whose fsync fails is refused, and its bytes never prefix the next line', async () => {
    const j = await Journal.open<Rec>(dir);
    await j.append([{ n: 1 }]);
    const probe = await open(join(dir, (await readdir(dir))[0]!), 'r');
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const spy = vi
      .spyOn(proto, 'sync')
      .mockRejectedValueOnce(Object.assign(new Error('EIO'), { code: 'EIO' }));
    try {
      await expect(j.append([{ n: 2 }, { n: 3 }])).rejects.toThrow(/EIO/);
    } finally {
      spy.mockRestore();
    }
    expect(j.head).toBe(1); // never acknowledged, so never a seq
    expect(await j.append([{ n: 4 }])).toEqual([2]);
    expect((await j.read(1)).map((e) => [e.seq, e.n])).toEqual([
      [1, 1],
      [2, 4],
    ]);
    expect(j.bytes).toBe((await stat(join(dir, (await readdir(dir))[0]!))).size);
    await j.close();
    const again = await Journal.open<Rec>(dir);
    expect(again.head).toBe(2);
    await again.close();
  });
});
