/**
 * kill -9 at any moment of an import: `ferry mirror import` and `ferry mirror
 * serve` as real child processes that die by SIGKILL, at named phases
 * (FERRY_CRASH_AT, a hook in mirror/import.ts) and at random times. After
 * every crash the store must open, clean up after itself, serve either the
 * old manifest or wholly the new one, and take the import again.
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CreateResult } from '../bundler/create.js';
import { importBundle } from '../mirror/import.js';
import { Store } from '../mirror/store.js';
import { buildBundle, makeWorld, type ArtifactInput, type World } from './helpers/fixtures.js';
import {
  killStrays,
  listTree,
  runFerry,
  sha256,
  sha256File,
  sleep,
  spawnFerry,
  startMirrorProc,
} from './helpers/mirror-proc.js';

const MiB = 1024 * 1024;
let w: World;
let rootBytes: Buffer;
/** A store with sequence 1 active: copied for every crash, never changed itself. */
let baseline: string;
let b1: CreateResult;
/** Sequence 2, small: for the named phases. */
let b2: CreateResult;
/** Sequence 2, ~64 MiB in four artifacts: for kills at random times. */
let big: CreateResult;
let copies = 0;

/** `count` artifacts of `size` random bytes, named from `first` on. */
function arts(count: number, size: number, first = 0): ArtifactInput[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `a${first + i}`,
    kind: 'file' as const,
    content: randomBytes(size),
  }));
}

beforeAll(async () => {
  w = await makeWorld();
  rootBytes = await readFile(w.rootPath);
  const one = arts(3, 40_000);
  b1 = await buildBundle(w, join(w.dir, 'one.ferry'), { artifacts: one });
  // sequence 2 keeps one blob of sequence 1: the import finds it already held
  b2 = await buildBundle(w, join(w.dir, 'two.ferry'), {
    artifacts: [one[0]!, ...arts(2, 200_000, 1)],
    spec: { sequence: 2 },
  });
  big = await buildBundle(w, join(w.dir, 'big.ferry'), {
    artifacts: arts(4, 16 * MiB),
    spec: { sequence: 2 },
  });
  baseline = join(w.dir, 'baseline');
  const store = await Store.open(baseline, { init: { rootBytes, site: 'plant-7' } });
  const r = await importBundle(store, b1.volumes[0]!.path);
  expect(r).toMatchObject({ ok: true, status: 'active', sequence: 1 });
}, 60_000);
afterEach(() => killStrays());
afterAll(() => w.cleanup());

/** A fresh copy of the baseline store (sequence 1 active). */
async function storeCopy(): Promise<string> {
  const dir = join(w.dir, `data-${++copies}`);
  await cp(baseline, dir, { recursive: true });
  return dir;
}

/**
 * Opens the store the way the next process would, then checks: nothing
 * half-written is left; the active manifest is `b1`'s or wholly `expected`'s
 * (its envelope bytes, every blob it names present with the right digest);
 * every stored blob matches its name. Returns the active sequence.
 */
async function expectRecovered(dir: string, expected: CreateResult): Promise<number> {
  const store = await Store.open(dir);
  const s = await store.readState();
  expect(s.pending).toEqual([]);
  const active = s.active!;
  expect([1, 2]).toContain(active.sequence);
  const b = active.sequence === 1 ? b1 : expected;
  expect(active.digest).toBe(sha256(b.envelopeBytes));
  expect(s.mark).toMatchObject({
    sequence: active.sequence,
    payloadDigest: active.payloadDigest,
  });
  expect(await store.readManifestBytes(active)).toEqual(b.envelopeBytes);
  for (const a of b.manifest.artifacts) {
    const st = await stat(store.blobPath(a.sha256));
    expect(st.size).toBe(a.size);
  }
  for (const name of await readdir(store.paths.blobs))
    expect(await sha256File(store.blobPath(name)), `blobs/sha256/${name}`).toBe(name);

  // Nothing half-written or unreferenced is left once the store has been opened.
  const tree = await listTree(dir);
  expect(await readdir(store.paths.tmp)).toEqual([]);
  expect(tree.filter((p) => p.endsWith('.tmp') || p.endsWith('.part'))).toEqual([]);
  expect(tree.filter((p) => p === 'lock' || p.startsWith('lock.'))).toEqual([]);
  expect(tree.filter((p) => p.startsWith('manifests/') && p.endsWith('.json'))).toEqual([
    `manifests/acme-ops/${active.sequence}.dsse.json`,
  ]);
  return active.sequence;
}

/** `ferry mirror import FILE --data DIR --json`, expected to succeed with `sequence` active. */
async function importToActive(dir: string, file: string, sequence: number): Promise<void> {
  const r = await runFerry(['mirror', 'import', file, '--data', dir, '--json']);
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({
    ok: true,
    results: [{ ok: true, status: 'active', sequence }],
  });
}

describe('kill -9 of ferry mirror import at each phase', () => {
  it.each([
    { phase: 'staged', after: 1 },
    { phase: 'manifest-written', after: 1 },
    { phase: 'blobs-published', after: 1 },
    { phase: 'before-state-write', after: 1 },
    { phase: 'after-state-write', after: 2 },
  ])(
    '$phase: the store opens with sequence $after active and the import completes again',
    async ({ phase, after }) => {
      const dir = await storeCopy();
      const file = b2.volumes[0]!.path;
      const crashed = await runFerry(['mirror', 'import', file, '--data', dir], { FERRY_CRASH_AT: phase });
      expect({ code: crashed.code, signal: crashed.signal }, crashed.stderr).toEqual({
        code: null,
        signal: 'SIGKILL',
      });
      expect(await expectRecovered(dir, b2)).toBe(after);
      await importToActive(dir, file, 2);
      expect(await expectRecovered(dir, b2)).toBe(2);
      await rm(dir, { recursive: true, force: true });
    },
  );

  it('a kill while waiting for the store lock leaves nothing behind either', async () => {
    const dir = await storeCopy();
    // The lock is held by a live process (this one): the import waits for it.
    await writeFile(
      join(dir, 'lock'),
      JSON.stringify({ pid: process.pid, host: 'test', token: 'held-by-test', at: new Date().toISOString() }),
    );
    const c = spawnFerry(['mirror', 'import', b2.volumes[0]!.path, '--data', dir]);
    const deadline = Date.now() + 15_000;
    while (!(await readdir(dir)).some((f) => f.startsWith('lock.')) && Date.now() < deadline) await sleep(20);
    await sleep(100);
    c.child.kill('SIGKILL');
    expect(await c.exited).toEqual({ code: null, signal: 'SIGKILL' });
    await rm(join(dir, 'lock'));
    expect(await expectRecovered(dir, b2)).toBe(1);
  });
});

describe('kill -9 of ferry mirror import at random times', () => {
  it('leaves sequence 1 or wholly sequence 2 every time, and a clean import then succeeds', async () => {
    const file = big.volumes[0]!.path;
    expect((await stat(file)).size).toBeGreaterThan(64 * MiB);
    // How long an undisturbed import takes here, process start included.
    const timed = await storeCopy();
    const t0 = Date.now();
    await importToActive(timed, file, 2);
    const duration = Date.now() - t0;
    await rm(timed, { recursive: true, force: true });

    const rounds = 8;
    const outcomes: string[] = [];
    for (let i = 0; i < rounds; i++) {
      const dir = await storeCopy();
      // a random delay within each eighth of [0, duration], so the whole import is covered
      const delay = Math.floor(((i + Math.random()) / rounds) * duration);
      const c = spawnFerry(['mirror', 'import', file, '--data', dir]);
      await sleep(delay);
      c.child.kill('SIGKILL');
      const exit = await c.exited;
      const before = await listTree(dir);
      const parts = before.filter((p) => p.startsWith('tmp/')).length;
      const blobs = before.filter((p) => p.startsWith('blobs/sha256/')).length;
      const seq = await expectRecovered(dir, big);
      outcomes.push(`${delay}ms ${exit.signal ?? `exit ${exit.code}`} tmp:${parts} blobs:${blobs} → ${seq}`);
      if (exit.signal === null) expect(exit.code, c.stderr()).toBe(0); // finished before the kill
      if (i === rounds - 1) {
        await importToActive(dir, file, 2);
        expect(await expectRecovered(dir, big), outcomes.join(', ')).toBe(2);
      }
      await rm(dir, { recursive: true, force: true });
    }
    console.info(`random kills over a ${duration} ms import:\n  ${outcomes.join('\n  ')}`);
  }, 60_000);
});

describe('kill -9 of ferry mirror serve importing from its drop folder', () => {
  it.each([
    { how: 'at a random moment of the import', env: {} },
    { how: 'just before the commit', env: { FERRY_CRASH_AT: 'before-state-write' } },
  ])(
    '$how: after a restart it serves the old or the new manifest, and the new one after the rescan',
    async ({ env }) => {
      const data = await storeCopy();
      const drop = join(w.dir, `drop-${copies}`);
      await mkdir(drop);
      const first = await startMirrorProc({ data, drop, env });
      const dropped = join(drop, 'big.ferry');
      await cp(big.volumes[0]!.path, dropped);
      await first.waitForLog((l) => l.event === 'drop.found' && l.file === dropped);
      if (!('FERRY_CRASH_AT' in env)) {
        await sleep(Math.floor(Math.random() * 800));
        first.signal('SIGKILL');
      }
      expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });

      const second = await startMirrorProc({ data, drop });
      expect(await readdir(join(data, 'tmp'))).toEqual([]);
      const m = Buffer.from(await (await fetch(`${second.url}/v1/manifest`)).arrayBuffer());
      expect([sha256(b1.envelopeBytes), sha256(big.envelopeBytes)]).toContain(sha256(m));
      if ('FERRY_CRASH_AT' in env) expect(m).toEqual(b1.envelopeBytes);

      await second.waitForLog((l) => l.event === 'import.accepted' && l.file === dropped && l.sequence === 2);
      const after = await fetch(`${second.url}/v1/manifest`);
      expect(Buffer.from(await after.arrayBuffer())).toEqual(big.envelopeBytes);
      const inv = (await (await fetch(`${second.url}/v1/inventory`)).json()) as { blobs: string[] };
      for (const a of big.manifest.artifacts) expect(inv.blobs).toContain(a.sha256);
      expect(await second.stop()).toEqual({ code: 0, signal: null });
      expect(await expectRecovered(data, big)).toBe(2);
      await rm(data, { recursive: true, force: true });
    },
    30_000,
  );
});
