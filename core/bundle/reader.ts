import { createHash } from 'node:crypto';
import { decodeBase64Strict } from '../encoding.js';
import { FerryError } from '../errors.js';
import { parseEnvelope, verifyEnvelope, type Envelope } from '../dsse.js';
import {
  decodeManifest,
  manifestBlobs,
  MANIFEST_PAYLOAD_TYPE,
  MAX_MANIFEST_BYTES,
  type Manifest,
} from '../manifest.js';
import {
  decideFreshness,
  initialFreshness,
  type Freshness,
  type FreshnessPolicy,
  type FreshnessVerdict,
} from '../freshness.js';
import { peekRootPayload, walkRootChain, MAX_ROOT_BYTES, type TrustedRoot } from '../root.js';
import { BLOCK, decodeHeader, hostileNameReason, isZeroBlock, paddingFor } from './tar.js';
import { PullReader } from './pull.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export const MANIFEST_ENTRY = 'manifest.dsse.json';
const ROOT_ENTRY = /^root\/([1-9][0-9]{0,8})\.root\.json$/;
const BLOB_ENTRY = /^blobs\/sha256\/([0-9a-f]{64})$/;
export const rootEntryName = (version: number) => `root/${version}.root.json`;
export const blobEntryName = (digest: string) => `blobs/sha256/${digest}`;

/** Where a verified blob's bytes go; the reader hashes, the sink stores. */
export interface BlobSink {
  write(chunk: Buffer): void | Promise<void>;
  /** Called only after the digest and size matched. */
  commit(): Promise<void>;
  /** Called when the blob or anything after its start failed. */
  abort(): Promise<void>;
}

export interface ReadBundleOptions {
  /** The pinned root. Absent only for `inspect`, which checks structure and digests but not signatures. */
  trusted?: TrustedRoot;
  /** The local clock (ms); expiry is judged against max(this, the latest signed time in `freshness`). */
  now?: number;
  /** When set, a manifest not meant for this site is refused. */
  site?: string;
  /** What the caller accepted before (mark and signed time); none for a stateless verify. */
  freshness?: Freshness;
  /** How an already-accepted manifest that has expired is answered (core/freshness.ts); default refuse. */
  acceptedExpired?: FreshnessPolicy['acceptedExpired'];
  maxManifestBytes?: number;
  maxRootBytes?: number;
  maxRootEntries?: number;
  openBlob?: (digest: string, size: number) => Promise<BlobSink | undefined>;
  onProgress?: (bytesRead: number) => void;
}

export interface BundleContents {
  envelope: Envelope;
  /** Exact bytes of the manifest entry as it was in the file. */
  envelopeBytes: Buffer;
  manifest: Manifest;
  /** True when signatures were checked against a trusted root. */
  verified: boolean;
  signers: string[];
  threshold?: number;
  /** The root the manifest was verified under (after any rotation). */
  root?: TrustedRoot;
  /** The freshness verdict (core/freshness.ts) when signatures were checked; refusals are thrown. */
  verdict?: Exclude<FreshnessVerdict, { kind: 'refuse' }>;
  /** Root envelopes the bundle carries, by version, exact bytes. */
  rootEntries: { version: number; bytes: Buffer }[];
  /** Versions newly adopted from the bundle's chain, oldest first. */
  adoptedRoots: number[];
  /** Blobs this file holds, in file order. */
  blobs: string[];
  /** Blobs the manifest names that this file does not hold (volume or delta). */
  missing: string[];
  complete: boolean;
  bytes: number;
}

export const DEFAULT_MAX_ROOT_ENTRIES = 1024;

/**
 * Reads a bundle in one streaming pass and refuses anything but the exact
 * structure of the format: manifest first, then ascending root envelopes, then
 * blobs named by the manifest, each hashed as it passes and never read past
 * its declared size. Signatures are checked before the first blob byte is
 * handed to a sink.
 */
export async function readBundle(
  source: AsyncIterable<Buffer>,
  opts: ReadBundleOptions = {},
): Promise<BundleContents> {
  const iterator = source[Symbol.asyncIterator]();
  try {
    return await readEntries(new PullReader(iterator), opts);
  } finally {
    await iterator.return?.(); // close the file (or socket) on refusal as on success
  }
}

async function readEntries(r: PullReader, opts: ReadBundleOptions): Promise<BundleContents> {
  const now = opts.now ?? Date.now();
  const maxManifest = opts.maxManifestBytes ?? MAX_MANIFEST_BYTES;
  const maxRoot = opts.maxRootBytes ?? MAX_ROOT_BYTES;
  const maxRoots = opts.maxRootEntries ?? DEFAULT_MAX_ROOT_ENTRIES;
  const seen = new Set<string>();
  let phase: 'start' | 'roots' | 'blobs' = 'start';
  let envelope: Envelope | undefined;
  let envelopeBytes: Buffer | undefined;
  const rootEntries: { version: number; bytes: Buffer; env: Envelope }[] = [];
  let head:
    | Omit<
        BundleContents,
        'blobs' | 'missing' | 'complete' | 'bytes' | 'envelope' | 'envelopeBytes' | 'rootEntries'
      >
    | undefined;
  let expected: Map<string, number> | undefined;
  const blobs: string[] = [];

  const finishHead = () => {
    if (!envelope) throw new FerryError('TAR_INVALID', 'bundle has no manifest');
    head = opts.trusted ? verifyHead(envelope, rootEntries, opts.trusted, now, opts) : peekHead(envelope);
    expected = manifestBlobs(head.manifest);
    phase = 'blobs';
  };

  for (;;) {
    const h = await r.readExact(BLOCK);
    if (!h) {
      throw phase === 'start'
        ? new FerryError('TAR_INVALID', 'file is empty; not a ferry bundle')
        : new FerryError(
            'TAR_TRUNCATED',
            `archive ends at byte ${r.position} without an end-of-archive marker`,
          );
    }
    if (isZeroBlock(h)) {
      const second = await r.readExact(BLOCK);
      if (!second) throw new FerryError('TAR_TRUNCATED', 'archive ends inside the end-of-archive marker');
      if (!isZeroBlock(second))
        throw new FerryError(
          'TAR_INVALID',
          `unexpected data after an empty header block at byte ${r.position}`,
        );
      await r.drainZeros(1024 * 1024, 'the end-of-archive marker');
      break;
    }
    const { name, size } = decodeHeader(h);
    const hostile = hostileNameReason(name);
    if (hostile)
      throw new FerryError('ENTRY_NAME_FORBIDDEN', `entry ${JSON.stringify(name)} refused: ${hostile}`);
    if (seen.has(name))
      throw new FerryError('ENTRY_DUPLICATE', `entry ${JSON.stringify(name)} appears twice`);
    seen.add(name);

    const rootMatch = ROOT_ENTRY.exec(name);
    const blobMatch = BLOB_ENTRY.exec(name);
    if (name !== MANIFEST_ENTRY && !rootMatch && !blobMatch) {
      throw new FerryError(
        'ENTRY_NAME_FORBIDDEN',
        `entry ${JSON.stringify(name)} is not part of the bundle format`,
      );
    }
    if (phase === 'start' && name !== MANIFEST_ENTRY) {
      throw new FerryError(
        'ENTRY_ORDER',
        `first entry is ${JSON.stringify(name)}; a bundle starts with manifest.dsse.json`,
      );
    }

    if (name === MANIFEST_ENTRY) {
      if (phase !== 'start')
        throw new FerryError('ENTRY_ORDER', 'manifest.dsse.json must be the first entry');
      if (size > maxManifest) {
        throw new FerryError(
          'MANIFEST_TOO_LARGE',
          `manifest envelope is ${size} bytes; the limit is ${maxManifest}`,
        );
      }
      envelopeBytes = await readSmall(r, size, 'the manifest');
      envelope = parseEnvelope(envelopeBytes, 'manifest envelope', maxManifest);
      phase = 'roots';
    } else if (rootMatch) {
      if (phase !== 'roots')
        throw new FerryError('ENTRY_ORDER', `${name} comes after a blob; root envelopes precede blobs`);
      const version = Number(rootMatch[1]);
      const last = rootEntries.at(-1);
      if (last && version <= last.version) {
        throw new FerryError('ENTRY_ORDER', `${name} follows root v${last.version}; roots must ascend`);
      }
      if (rootEntries.length >= maxRoots)
        throw new FerryError('ENTRY_TOO_LARGE', `more than ${maxRoots} root envelopes`);
      if (size > maxRoot)
        throw new FerryError('ENTRY_TOO_LARGE', `${name} is ${size} bytes; the limit is ${maxRoot}`);
      const bytes = await readSmall(r, size, name);
      const env = parseEnvelope(bytes, name, maxRoot);
      if (peekRootPayload(env).version !== version) {
        throw new FerryError('ROOT_INVALID', `${name} holds a root of another version`);
      }
      rootEntries.push({ version, bytes, env });
    } else {
      if (phase === 'roots') finishHead();
      const digest = blobMatch![1]!;
      const want = expected!.get(digest);
      if (want === undefined)
        throw new FerryError('ENTRY_NOT_IN_MANIFEST', `blob ${digest} is not named in the manifest`);
      if (size > want)
        throw new FerryError('ENTRY_TOO_LARGE', `blob ${digest} is ${size} bytes; the manifest says ${want}`);
      if (size < want) {
        throw new FerryError(
          'BLOB_SIZE_MISMATCH',
          `blob ${digest} is ${size} bytes; the manifest says ${want}`,
        );
      }
      await readBlob(r, digest, size, opts);
      blobs.push(digest);
      opts.onProgress?.(r.position);
      continue; // readBlob consumed the padding
    }
    await r.skipZeros(paddingFor(size), `the padding of ${name}`);
  }
  if (phase === 'start') throw new FerryError('TAR_INVALID', 'bundle has no manifest');
  if (phase === 'roots') finishHead();
  const held = new Set(blobs);
  const missing = [...expected!.keys()].filter((d) => !held.has(d));
  return {
    ...head!,
    envelope: envelope!,
    envelopeBytes: envelopeBytes!,
    rootEntries: rootEntries.map(({ version, bytes }) => ({ version, bytes })),
    blobs,
    missing,
    complete: missing.length === 0,
    bytes: r.position,
  };
}

async function readSmall(r: PullReader, size: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const s of r.slices(size, what)) parts.push(Buffer.from(s));
  return Buffer.concat(parts, size);
}

async function readBlob(r: PullReader, digest: string, size: number, opts: ReadBundleOptions): Promise<void> {
  const sink = opts.openBlob ? await opts.openBlob(digest, size) : undefined;
  const hash = createHash('sha256');
  try {
    for await (const s of r.slices(size, `blob ${digest}`)) {
      hash.update(s);
      if (sink) await sink.write(s);
    }
    const got = hash.digest('hex');
    if (got !== digest)
      throw new FerryError('BLOB_DIGEST_MISMATCH', `blob ${digest} has sha256 ${got}; it was altered`);
    await r.skipZeros(paddingFor(size), `the padding of blob ${digest}`); // the entry is whole before it is kept
  } catch (e) {
    if (sink) await sink.abort();
    throw e;
  }
  if (sink) await sink.commit();
}

type Head = Pick<
  BundleContents,
  'manifest' | 'verified' | 'signers' | 'threshold' | 'root' | 'adoptedRoots' | 'verdict'
>;

function verifyHead(
  env: Envelope,
  roots: { env: Envelope }[],
  trusted: TrustedRoot,
  clock: number,
  opts: ReadBundleOptions,
): Head {
  const { root, adopted } = walkRootChain(
    trusted,
    roots.map((x) => x.env),
  );
  const f = opts.freshness ?? initialFreshness();
  const checked = verifyEnvelope(env, MANIFEST_PAYLOAD_TYPE, root.roles.bundle, 'manifest');
  const manifest = decodeManifest(checked.body);
  const verdict = decideFreshness(
    f,
    { manifest, payloadDigest: sha256(checked.body), signers: checked.signers },
    root.payload,
    {
      clock,
      acceptedExpired: opts.acceptedExpired ?? 'refuse',
      ...(opts.site !== undefined && { site: opts.site }),
    },
  );
  if (verdict.kind === 'refuse') throw new FerryError(verdict.code, verdict.reason);
  return {
    manifest,
    verified: true,
    signers: checked.signers,
    threshold: root.roles.bundle.threshold,
    root,
    adoptedRoots: adopted.map((a) => a.payload.version),
    verdict,
  };
}

function peekHead(env: Envelope): Head {
  if (env.payloadType !== MANIFEST_PAYLOAD_TYPE) {
    throw new FerryError(
      'PAYLOAD_TYPE_MISMATCH',
      `manifest payloadType is ${JSON.stringify(env.payloadType)}`,
    );
  }
  const manifest = decodeManifest(decodeBase64Strict(env.payload, 'manifest payload'));
  return { manifest, verified: false, signers: [], adoptedRoots: [] };
}
