/**
 * The mirror's store and import, against real bundles in temp dirs. Every
 * refusal proves that blobs/, manifests/ and the active manifest did not move
 * and that a quarantine record names the code.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, stat, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeEnvelope } from '../core/dsse.js';
import type { PrivateKey } from '../platform/keyfile.js';
import { importBundle, type ImportResult } from '../mirror/import.js';
import { Store } from '../mirror/store.js';
import {
  buildBundle,
  makeKey,
  makeRootEnvelope,
  makeWorld,
  snapshotDir,
  type ArtifactInput,
  type World,
} from './helpers/fixtures.js';

const DAY = 86_400_000;
let w: World;
let rootBytes: Buffer;
let n = 0;

beforeAll(async () => {
  w = await makeWorld();
  rootBytes = await readFile(w.rootPath);
});
afterAll(() => w.cleanup());

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** `count` artifacts of `size` bytes whose content depends on `tag`. */
function arts(tag: string, count = 3, size = 30_000): ArtifactInput[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `a${i}`,
    kind: 'file' as const,
    content: Buffer.alloc(size, `${tag}:${i};`),
  }));
}

interface Harness {
  store: Store;
  clock: { now: number };
}

async function newStore(): Promise<Harness> {
  const clock = { now: Date.now() };
  const dir = await mkdtemp(join(w.dir, 'data-'));
  const store = await Store.open(dir, { init: { rootBytes, site: 'plant-7' }, now: () => clock.now });
  return { store, clock };
}

async function bundle(
  sequence: number,
  tag: string,
  o: Parameters<typeof buildBundle>[2] = {},
): Promise<ReturnType<typeof buildBundle>> {
  const out = join(w.dir, `b${++n}-s${sequence}-${tag}.ferry`);
  return buildBundle(w, out, { artifacts: arts(tag), ...o, spec: { sequence, ...o.spec } });
}

async function path(
  sequence: number,
  tag: string,
  o: Parameters<typeof buildBundle>[2] = {},
): Promise<string> {
  return (await bundle(sequence, tag, o)).volumes[0]!.path;
}

/** What a refusal must not change. */
async function view(store: Store) {
  return {
    blobs: await snapshotDir(store.paths.blobs),
    manifests: await snapshotDir(store.paths.manifests),
    active: (await store.readState()).active,
  };
}

function accepted(r: ImportResult) {
  if (!r.ok) throw new Error(`expected acceptance, got ${r.code}: ${r.message}`);
  return r;
}

/** Invariants that hold after any sequence of imports. */
async function expectConsistent(store: Store): Promise<void> {
  for (const name of await readdir(store.paths.blobs))
    expect(sha256(await readFile(store.blobPath(name)))).toBe(name);
  expect(await readdir(store.paths.tmp)).toEqual([]);
  expect((await readdir(store.dir)).filter((f) => f.startsWith('lock'))).toEqual([]);
  const s = await store.readState();
  if (s.active) {
    expect(sha256(await store.readManifestBytes(s.active))).toBe(s.active.digest);
    expect(await store.missingBlobs(s.active)).toEqual([]);
  }
  for (const p of s.pending) expect(sha256(await store.readManifestBytes(p))).toBe(p.digest);
}

describe('mirror import: accepting', () => {
  it('activates a valid bundle, stores blobs read-only by digest, and never touches the source', async () => {
    const { store } = await newStore();
    const b = await bundle(1, 'one');
    const file = b.volumes[0]!.path;
    const before = sha256(await readFile(file));
    const r = accepted(await importBundle(store, file));
    expect(r).toMatchObject({ status: 'active', changed: true, sequence: 1, missing: [] });
    expect(r.blobsAdded.sort()).toEqual(b.manifest.artifacts.map((a) => a.sha256).sort());
    for (const a of b.manifest.artifacts) {
      const st = await stat(store.blobPath(a.sha256));
      expect(st.mode & 0o777).toBe(0o444);
      expect(st.size).toBe(a.size);
    }
    expect(await store.readManifestBytes(r)).toEqual(b.envelopeBytes);
    expect(sha256(await readFile(file))).toBe(before);
    const reopened = await Store.open(store.dir);
    expect((await reopened.readState()).active).toMatchObject({
      sequence: 1,
      digest: sha256(b.envelopeBytes),
    });
    await expectConsistent(store);
  });

  it('is idempotent: the same bundle again changes nothing', async () => {
    const { store } = await newStore();
    const file = await path(1, 'same');
    accepted(await importBundle(store, file));
    const before = await view(store);
    const again = accepted(await importBundle(store, file));
    expect(again).toMatchObject({ status: 'active', changed: false, blobsAdded: [] });
    expect(await view(store)).toEqual(before);
  });

  it('takes volumes in any order and activates only after the last', async () => {
    const { store } = await newStore();
    const b = await bundle(1, 'vol', { volumeSize: 40_000 });
    expect(b.volumes).toHaveLength(3);
    const [v1, v2, v3] = b.volumes.map((v) => v.path) as [string, string, string];
    const r3 = accepted(await importBundle(store, v3));
    expect(r3).toMatchObject({ status: 'pending', changed: true });
    expect(r3.missing).toHaveLength(2);
    expect((await store.readState()).active).toBeNull();
    expect(accepted(await importBundle(store, v2))).toMatchObject({ status: 'pending' });
    expect(accepted(await importBundle(store, v2))).toMatchObject({ status: 'pending', changed: false });
    expect((await store.readState()).active).toBeNull();
    expect(accepted(await importBundle(store, v1))).toMatchObject({ status: 'active', missing: [] });
    expect((await store.readState()).pending).toEqual([]);
    await expectConsistent(store);
  });

  it('activates a delta over blobs it already holds, and holds a delta without its base as pending', async () => {
    const { store } = await newStore();
    const base = await bundle(1, 'base');
    accepted(await importBundle(store, base.volumes[0]!.path));
    const held = new Set(base.manifest.artifacts.map((a) => a.sha256));
    const artifacts = [...arts('base', 2), { name: 'a2', kind: 'file' as const, content: 'new in 2' }];
    const delta = await bundle(2, 'delta', { artifacts, baseBlobs: held });
    expect(delta.volumes[0]!.blobs).toHaveLength(1);
    const r = accepted(await importBundle(store, delta.volumes[0]!.path));
    expect(r).toMatchObject({ status: 'active', sequence: 2 });
    expect(r.blobsAdded).toEqual(delta.volumes[0]!.blobs);

    const fresh = (await newStore()).store;
    const lone = accepted(await importBundle(fresh, delta.volumes[0]!.path));
    expect(lone.status).toBe('pending');
    expect(lone.missing).toHaveLength(2);
    expect((await fresh.readState()).active).toBeNull();
  });

  it('adopts a newer root carried by a bundle and keeps trusting it', async () => {
    const { store } = await newStore();
    accepted(await importBundle(store, await path(1, 'r1')));
    const newRoot = await makeKey(join(w.dir, 'keys2'), `root-${++n}`);
    const newRelease = await makeKey(join(w.dir, 'keys2'), `release-${++n}`);
    const v2 = Buffer.from(
      serializeEnvelope(
        makeRootEnvelope({
          version: 2,
          rootKeys: [newRoot],
          bundleKeys: [newRelease],
          signers: [w.rootKey, newRoot],
        }),
      ),
    );
    const r = accepted(
      await importBundle(
        store,
        await path(2, 'r2', { signers: [newRelease], roots: [{ version: 2, bytes: v2 }] }),
      ),
    );
    expect(r).toMatchObject({ status: 'active', adoptedRoots: [2] });
    const s = await store.readState();
    expect(s.roots.map((b) => Buffer.from(b, 'base64'))).toEqual([rootBytes, v2]);
    expect(store.trustedRoot(s).payload.version).toBe(2);
    accepted(await importBundle(store, await path(3, 'r3', { signers: [newRelease] })));
    const old = await importBundle(store, await path(4, 'r4'));
    expect(old).toMatchObject({ ok: false, code: 'SIGNATURE_THRESHOLD' });
    await expect(Store.open(store.dir, { init: { rootBytes, site: 'plant-7' } })).resolves.toBeInstanceOf(
      Store,
    );
  });
});

describe('mirror import: every refusal leaves the store as it was', () => {
  let stranger: PrivateKey;
  let rogueRoot: PrivateKey;
  beforeAll(async () => {
    stranger = await makeKey(join(w.dir, 'keys3'), 'stranger');
    rogueRoot = await makeKey(join(w.dir, 'keys3'), 'rogue-root');
  });

  const rootEntry = (version: number, signers: PrivateKey[]) => ({
    version,
    bytes: Buffer.from(
      serializeEnvelope(
        makeRootEnvelope({ version, rootKeys: [rogueRoot], bundleKeys: [w.bundleKey], signers }),
      ),
    ),
  });

  const cases: { name: string; code: string; make: (h: Harness) => Promise<string> }[] = [
    {
      name: 'a signature from a key the root does not name',
      code: 'SIGNATURE_THRESHOLD',
      make: () => path(3, 'sig', { signers: [stranger] }),
    },
    {
      name: 'a tampered blob (after two good new blobs were received)',
      code: 'BLOB_DIGEST_MISMATCH',
      make: async () => {
        const file = await path(3, 'tamper');
        const bytes = await readFile(file);
        const at = bytes.indexOf(Buffer.from('tamper:2;'));
        bytes[at + 100] = bytes[at + 100]! ^ 1;
        await writeFile(file, bytes);
        return file;
      },
    },
    { name: 'a lower sequence', code: 'SEQUENCE_ROLLBACK', make: () => path(1, 'older') },
    {
      name: 'sequence 1 naming a new publisher (one sequence space)',
      code: 'SEQUENCE_ROLLBACK',
      make: () => path(1, 'newpub', { spec: { publisher: 'new-ops' } }),
    },
    {
      name: 'the held sequence naming a new publisher, other content',
      code: 'EQUIVOCATION',
      make: () => path(2, 'newpub2', { spec: { publisher: 'new-ops' } }),
    },
    { name: 'the same sequence with other content', code: 'EQUIVOCATION', make: () => path(2, 'twin') },
    {
      name: 'a bundle for another site',
      code: 'SITE_MISMATCH',
      make: () => path(3, 'site', { spec: { sites: ['plant-9'] } }),
    },
    {
      name: 'an expired manifest',
      code: 'MANIFEST_EXPIRED',
      make: async (h) => {
        const file = await path(3, 'expired', { spec: { expires: '10d' } });
        h.clock.now += 11 * DAY;
        return file;
      },
    },
    {
      name: 'a root that skips a version',
      code: 'ROOT_CHAIN_BROKEN',
      make: () => path(3, 'skip', { roots: [rootEntry(3, [w.rootKey, rogueRoot])] }),
    },
    {
      name: 'a root not signed by the trusted root keys',
      code: 'ROOT_SIGNATURE',
      make: () => path(3, 'rogue', { roots: [rootEntry(2, [rogueRoot])] }),
    },
    {
      name: 'a file that is not a bundle',
      code: 'TAR_INVALID',
      make: async () => {
        const file = join(w.dir, `junk-${++n}.ferry`);
        await writeFile(file, Buffer.alloc(2048, 'x'));
        return file;
      },
    },
  ];

  for (const c of cases) {
    it(`refuses ${c.name} with ${c.code}`, async () => {
      const h = await newStore();
      accepted(await importBundle(h.store, await path(2, 'held')));
      const file = await c.make(h);
      const source = sha256(await readFile(file));
      const before = await view(h.store);
      const stateBefore = await h.store.readState();
      const r = await importBundle(h.store, file);
      expect(r).toMatchObject({ ok: false, code: c.code, file });
      expect(await view(h.store)).toEqual(before);
      const after = await h.store.readState();
      expect({ ...after, quarantine: [] }).toEqual({ ...stateBefore, quarantine: [] });
      expect(after.quarantine.at(-1)).toMatchObject({ file, code: c.code });
      expect(after.quarantine.at(-1)!.message).not.toBe('');
      expect(sha256(await readFile(file))).toBe(source);
      await expectConsistent(h.store);
    });
  }

  it('throws (and records nothing) when the file cannot be read at all', async () => {
    const { store } = await newStore();
    const before = await readFile(store.paths.state);
    await expect(importBundle(store, join(w.dir, 'no-such.ferry'))).rejects.toMatchObject({
      code: 'IO_ERROR',
    });
    expect(await readFile(store.paths.state)).toEqual(before);
  });
});

describe('mirror store: opening and concurrency', () => {
  it('removes stale tmp files and unreferenced manifests at open, and keeps what state names', async () => {
    const { store } = await newStore();
    accepted(await importBundle(store, await path(1, 'keep')));
    const keep = await view(store);
    await writeFile(join(store.paths.tmp, `${'0'.repeat(64)}.abc.part`), 'half a blob');
    await mkdir(join(store.paths.tmp, 'junkdir'));
    await writeFile(join(store.dir, '.state.json.123456.tmp'), '{');
    await writeFile(join(store.paths.manifests, 'acme-ops', '99.dsse.json'), '{}');
    await Store.open(store.dir);
    expect(await readdir(store.paths.tmp)).toEqual([]);
    expect((await readdir(store.dir)).sort()).toEqual(['blobs', 'manifests', 'state.json', 'tmp']);
    expect(await view(store)).toEqual(keep);
  });

  it('refuses to open for another site or an unrelated root', async () => {
    const { store } = await newStore();
    await expect(Store.open(store.dir, { init: { rootBytes, site: 'plant-9' } })).rejects.toMatchObject({
      code: 'STORE_MISMATCH',
    });
    const other = serializeEnvelope(makeRootEnvelope({ rootKeys: [w.bundleKey], bundleKeys: [w.bundleKey] }));
    await expect(
      Store.open(store.dir, { init: { rootBytes: Buffer.from(other), site: 'plant-7' } }),
    ).rejects.toMatchObject({ code: 'STORE_MISMATCH' });
    const nowhere = join(w.dir, `empty-${++n}`);
    await expect(Store.open(nowhere)).rejects.toMatchObject({ code: 'STORE_INVALID' });
    await expect(stat(nowhere)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('serialises concurrent imports of different bundles into one consistent state', async () => {
    const { store } = await newStore();
    const second = await Store.open(store.dir);
    const files = await Promise.all([1, 2, 3, 4].map((s) => path(s, `c${s}`)));
    const results = await Promise.all(files.map((f, i) => importBundle(i % 2 ? second : store, f)));
    for (const r of results) expect(r.ok || r.code === 'SEQUENCE_ROLLBACK').toBe(true);
    const s = await store.readState();
    expect(s.active?.sequence).toBe(4);
    expect(s.mark?.sequence).toBe(4);
    expect(s.imports.length + s.quarantine.length).toBe(4);
    await expectConsistent(store);
  });
});
