/**
 * A peer's blobs enter the store without a second read: the puller hashed
 * every byte as it arrived, and the import (importFrom with `verified`) takes
 * a file only after the offer's manifest passed every check of a courier's
 * file, only for a digest that manifest names, and only at the signed size.
 * Each case mounts what a broken or hostile pull could leave behind and
 * checks that nothing of it reaches blobs/.
 */
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../core/bundle/reader.js';
import { offerSource } from '../mirror/bundle-source.js';
import { importFrom } from '../mirror/import.js';
import type { Store } from '../mirror/store.js';
import { fileSource } from '../platform/fsx.js';
import {
  buildBundle,
  makeWorld,
  SAMPLE_ARTIFACTS,
  snapshotDir,
  type ArtifactInput,
  type World,
} from './helpers/fixtures.js';
import { sha256 } from './helpers/mirror-proc.js';
import { storeWith } from './helpers/peer-stores.js';

let w: World;
const BIG = randomBytes(512 * 1024);
const SMALL = randomBytes(40_000);
const ARTS: ArtifactInput[] = [
  ...SAMPLE_ARTIFACTS,
  { name: 'big', kind: 'file', content: BIG },
  { name: 'small', kind: 'file', content: SMALL },
];
const file: Record<string, string> = {};

beforeAll(async () => {
  w = await makeWorld();
  await buildBundle(w, (file.seq1 = join(w.dir, 'seq1.ferry')), { spec: { sequence: 1 } });
  await buildBundle(w, (file.seq2 = join(w.dir, 'seq2.ferry')), { spec: { sequence: 2 }, artifacts: ARTS });
}, 60_000);
afterAll(() => w.cleanup());

const newStore = (...bundles: string[]) => storeWith(w, ...bundles);

/** The manifest envelope of a bundle file, as a peer would serve it. */
async function envelopeOf(path: string): Promise<Buffer> {
  return (await readBundle(fileSource(path))).envelopeBytes;
}

/** Files in peer-pulls/ named by digest, as a pull leaves them. */
async function pulled(store: Store, files: Record<string, Buffer>): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const [digest, bytes] of Object.entries(files)) {
    const p = join(store.paths.peerPulls, digest);
    await writeFile(p, bytes);
    out.set(digest, p);
  }
  return out;
}

const offer = (envelopeBytes: Buffer) => () => offerSource({ envelopeBytes, roots: [], blobs: [] });

describe('import of blobs verified as they were pulled', () => {
  it('takes every named blob at its signed size without streaming it, and the manifest activates', async () => {
    const store = await newStore(file.seq1!);
    const verified = await pulled(store, { [sha256(BIG)]: BIG, [sha256(SMALL)]: SMALL });
    const r = await importFrom(store, {
      label: 'peer test',
      open: offer(await envelopeOf(file.seq2!)),
      verified,
      quarantine: false,
    });
    expect(r).toMatchObject({ ok: true, sequence: 2, status: 'active', missing: [] });
    expect(await readFile(store.blobPath(sha256(BIG)))).toEqual(BIG);
    expect(await readFile(store.blobPath(sha256(SMALL)))).toEqual(SMALL);
    expect(await readdir(store.paths.peerPulls)).toEqual([]);
  });

  it('leaves out a file of another size than the signed one, and one the manifest does not name', async () => {
    const store = await newStore(file.seq1!);
    const stranger = randomBytes(1000);
    // A named digest whose file is short (a cut transfer renamed by mistake): its bytes are not the blob.
    const verified = await pulled(store, {
      [sha256(BIG)]: BIG.subarray(0, BIG.length - 1),
      [sha256(SMALL)]: SMALL,
      [sha256(stranger)]: stranger,
    });
    const r = await importFrom(store, {
      label: 'peer test',
      open: offer(await envelopeOf(file.seq2!)),
      verified,
      quarantine: false,
    });
    expect(r).toMatchObject({ ok: true, sequence: 2, status: 'pending', missing: [sha256(BIG)] });
    expect(r.ok && r.blobsAdded).toEqual([sha256(SMALL)]);
    const held = await readdir(store.paths.blobs);
    expect(held).not.toContain(sha256(BIG));
    expect(held).not.toContain(sha256(stranger));
  });

  it('takes nothing when the manifest is refused (an older one: rollback), and the store is unchanged', async () => {
    const store = await newStore(file.seq1!, file.seq2!);
    const extra = randomBytes(2000);
    const verified = await pulled(store, { [sha256(extra)]: extra });
    const before = await snapshotDir(store.dir);
    const r = await importFrom(store, {
      label: 'peer test',
      open: offer(await envelopeOf(file.seq1!)),
      verified,
      quarantine: false,
    });
    expect(r).toMatchObject({ ok: false, code: 'SEQUENCE_ROLLBACK' });
    expect(await snapshotDir(store.dir)).toEqual(before);
  });
});
