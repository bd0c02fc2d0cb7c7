import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { FerryError } from '../core/errors.js';
import { serializeEnvelope, signEnvelope, type Signer } from '../core/dsse.js';
import { fsyncDir, tempPathFor } from '../platform/fsx.js';
import { MANIFEST_PAYLOAD_TYPE, type Manifest } from '../core/manifest.js';
import { parseIsoUtc } from '../core/time.js';
import { blobEntryName } from '../core/bundle/reader.js';
import { encodeHead, volumePath } from '../core/bundle/head.js';
import { checkPolicies } from './policies.js';
import type { LoadedSpec } from './spec.js';
import { BLOCK, encodeHeader, paddingFor } from '../core/bundle/tar.js';

export interface CreateOptions {
  signers: readonly Signer[];
  /** Root envelopes (exact bytes) to carry, for sites that must walk a rotation. */
  roots?: readonly { version: number; bytes: Buffer }[];
  /** Split into volumes of at most this many bytes each. */
  volumeSize?: number;
  /** Digests the receiving site already has (from a base bundle): omitted from this one. */
  baseBlobs?: ReadonlySet<string>;
  onProgress?: (done: number, total: number) => void;
}

export interface CreatedVolume {
  path: string;
  bytes: number;
  blobs: string[];
}

export interface CreateResult {
  manifest: Manifest;
  envelopeBytes: Buffer;
  volumes: CreatedVolume[];
  omitted: string[];
}

const EOF_BYTES = 2 * BLOCK;
const MAX_INFLIGHT_WRITES = 4;
/** Start write-back every this many bytes, so the final fsync does not flush the whole bundle at once. */
const FLUSH_EVERY = 64 * 1024 * 1024;

/** Overlaps write-back with the rest of the work: at most one fdatasync in flight. */
class Flusher {
  private pending: Promise<void> | undefined;
  private since = 0;

  constructor(private readonly fh: FileHandle) {}

  wrote(n: number): void {
    this.since += n;
    if (this.since < FLUSH_EVERY || this.pending) return;
    this.since = 0;
    this.pending = this.fh.datasync().finally(() => (this.pending = undefined));
  }

  async settle(): Promise<void> {
    await this.pending;
  }
}

/** The manifest entry's length is fixed before any digest is known: digests and signatures are fixed-width. */
function envelopeLength(manifest: Manifest, signers: readonly Signer[]): number {
  const dummy = signers.map((s) => ({ keyid: s.keyid, seed: new Uint8Array(32) }));
  return Buffer.byteLength(
    serializeEnvelope(signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(JSON.stringify(manifest)), dummy)),
  );
}

export { volumePath };

/**
 * Writes a bundle (or its volumes) in one read of each artifact (policies are
 * read once more before anything is written, to be checked): the manifest
 * entry's space is reserved up front, each artifact is hashed while it is
 * written, its header is written once its digest is known, and the signed
 * manifest fills the reserved space last. Output appears only by rename.
 */
export async function createBundle(
  spec: LoadedSpec,
  out: string,
  opts: CreateOptions,
): Promise<CreateResult> {
  if (opts.signers.length === 0)
    throw new FerryError('USAGE', 'at least one --key is needed to sign the bundle');
  const { manifest, sources } = spec;
  // every policy validates and names only what this bundle carries, or nothing is written
  const policies = await checkPolicies(spec);
  const roots = [...(opts.roots ?? [])].sort((a, b) => a.version - b.version);
  const envLen = envelopeLength(manifest, opts.signers);
  const headBytes =
    BLOCK +
    envLen +
    paddingFor(envLen) +
    roots.reduce((n, r) => n + BLOCK + r.bytes.length + paddingFor(r.bytes.length), 0);
  const plan = planVolumes(sources, headBytes, opts.volumeSize);
  const mtime = Math.floor(parseIsoUtc(manifest.created)! / 1000);
  const total = sources.reduce((n, s) => n + s.artifact.size, 0);
  const written = new Set<string>();
  const omitted = new Set<string>();
  let done = 0;

  const volumes: { tmp: string; fh: FileHandle; flusher: Flusher; end: number; blobs: string[] }[] = [];
  try {
    for (const group of plan) {
      const path = volumePath(out, volumes.length, plan.length);
      const tmp = tempPathFor(path);
      const fh = await open(tmp, 'wx', 0o644);
      volumes.push({ tmp, fh, flusher: new Flusher(fh), end: headBytes, blobs: [] });
      const vol = volumes.at(-1)!;
      for (const src of group) {
        const at = vol.end;
        const digest = await writeHashed(vol.fh, src.path, src.artifact.size, at + BLOCK, (n) => {
          vol.flusher.wrote(n);
          done += n;
          opts.onProgress?.(done, total);
        });
        const checked = policies.get(src.artifact.name);
        if (src.artifact.kind === 'policy' && checked !== digest)
          throw new FerryError(
            'IO_ERROR',
            `${src.path} changed after it was checked; run bundle create again`,
          );
        src.artifact.sha256 = digest;
        if (written.has(digest) || opts.baseBlobs?.has(digest)) {
          if (opts.baseBlobs?.has(digest)) omitted.add(digest);
          continue; // the space is reused by the next blob; the file is truncated at the end
        }
        await vol.fh.write(encodeHeader(blobEntryName(digest), src.artifact.size, mtime), 0, BLOCK, at);
        const pad = paddingFor(src.artifact.size);
        if (pad) await vol.fh.write(Buffer.alloc(pad), 0, pad, at + BLOCK + src.artifact.size);
        vol.end = at + BLOCK + src.artifact.size + pad;
        written.add(digest);
        vol.blobs.push(digest);
      }
    }
    const envelopeBytes = Buffer.from(
      serializeEnvelope(
        signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(JSON.stringify(manifest)), opts.signers),
      ),
    );
    if (envelopeBytes.length !== envLen)
      throw new Error(`manifest envelope is ${envelopeBytes.length} bytes, reserved ${envLen}`);
    const head = encodeHead(envelopeBytes, roots, mtime);
    const result: CreatedVolume[] = [];
    for (const [i, vol] of volumes.entries()) {
      await vol.fh.write(head, 0, head.length, 0);
      await vol.fh.write(Buffer.alloc(EOF_BYTES), 0, EOF_BYTES, vol.end);
      await vol.fh.truncate(vol.end + EOF_BYTES);
      await vol.flusher.settle();
      await vol.fh.sync();
      await vol.fh.close();
      result.push({ path: volumePath(out, i, volumes.length), bytes: vol.end + EOF_BYTES, blobs: vol.blobs });
    }
    for (const [i, vol] of volumes.entries()) await rename(vol.tmp, result[i]!.path);
    await fsyncDir(dirname(out));
    return { manifest, envelopeBytes, volumes: result, omitted: [...omitted] };
  } catch (e) {
    for (const vol of volumes) {
      await vol.flusher.settle().catch(() => undefined);
      await vol.fh.close().catch(() => undefined);
      await rm(vol.tmp, { force: true });
    }
    throw e;
  }
}

export { encodeHead };

/** Groups artifacts into volumes by size (first fit, spec order). */
function planVolumes<T extends { artifact: { name: string; size: number } }>(
  sources: T[],
  headBytes: number,
  volumeSize?: number,
): T[][] {
  if (volumeSize === undefined) return [sources];
  const room = volumeSize - headBytes - EOF_BYTES;
  const groups: { items: T[]; used: number }[] = [];
  for (const s of sources) {
    const need = BLOCK + s.artifact.size + paddingFor(s.artifact.size);
    if (need > room) {
      throw new FerryError(
        'USAGE',
        `artifact ${s.artifact.name} (${s.artifact.size} bytes) does not fit in a volume of ${volumeSize} bytes`,
      );
    }
    const g = groups.find((x) => x.used + need <= room);
    if (g) {
      g.items.push(s);
      g.used += need;
    } else groups.push({ items: [s], used: need });
  }
  return groups.length ? groups.map((g) => g.items) : [[]];
}

/** Copies a file into `fh` at `position` while hashing it; refuses a file that changed size. */
async function writeHashed(
  fh: FileHandle,
  path: string,
  size: number,
  position: number,
  progress: (n: number) => void,
): Promise<string> {
  const hash = createHash('sha256');
  const inflight: Promise<unknown>[] = [];
  let pos = position;
  let seen = 0;
  try {
    for await (const chunk of createReadStream(path, {
      highWaterMark: 1024 * 1024,
    }) as AsyncIterable<Buffer>) {
      seen += chunk.length;
      if (seen > size) throw new FerryError('IO_ERROR', `${path} grew while the bundle was being written`);
      hash.update(chunk);
      inflight.push(fh.write(chunk, 0, chunk.length, pos));
      pos += chunk.length;
      progress(chunk.length);
      if (inflight.length >= MAX_INFLIGHT_WRITES) await inflight.shift();
    }
  } finally {
    await Promise.allSettled(inflight); // never close the file under a pending write
  }
  await Promise.all(inflight);
  if (seen !== size) throw new FerryError('IO_ERROR', `${path} shrank while the bundle was being written`);
  return hash.digest('hex');
}
