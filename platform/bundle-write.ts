/**
 * Writes a bundle whose blobs already sit on disk under their digests (a store): the head
 * (core/bundle/head.ts), each blob as `blobs/sha256/<hex>` streamed and re-hashed on the way (a blob
 * that no longer matches its name stops the write), the end-of-archive blocks. With a volume size the
 * blobs are spread over self-verifying volumes (each with the same head; first fit, in order), named
 * as the bundler names them. Files appear only by rename after fsync, so a crash or a refusal leaves
 * nothing half-written at `out`.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { blobEntryName } from '../core/bundle/reader.js';
import { encodeHead, volumePath } from '../core/bundle/head.js';
import { BLOCK, encodeHeader, paddingFor } from '../core/bundle/tar.js';
import { FerryError } from '../core/errors.js';
import { fsyncDir, tempPathFor } from './fsx.js';

export interface StoredBlob {
  sha256: string;
  size: number;
  path: string;
}

export interface WrittenVolume {
  path: string;
  bytes: number;
  sha256: string;
  blobs: string[];
}

const EOF_BYTES = 2 * BLOCK;
const entryBytes = (size: number) => BLOCK + size + paddingFor(size);

/** Bytes of a one-file bundle with this head and these blobs (what a full bundle would weigh). */
export function bundleSize(
  envelopeBytes: Buffer,
  blobs: readonly { sha256: string; size: number }[],
): number {
  const seen = new Set<string>();
  let n = entryBytes(envelopeBytes.length) + EOF_BYTES;
  for (const b of blobs) {
    if (seen.has(b.sha256)) continue;
    seen.add(b.sha256);
    n += entryBytes(b.size);
  }
  return n;
}

/** Groups blobs into volumes of at most `volumeSize` bytes (first fit, in order). */
function planVolumes(headBytes: number, blobs: readonly StoredBlob[], volumeSize?: number): StoredBlob[][] {
  const seen = new Set<string>();
  const uniq = blobs.filter((b) => !seen.has(b.sha256) && seen.add(b.sha256));
  if (volumeSize === undefined) return [uniq];
  const room = volumeSize - headBytes - EOF_BYTES;
  const groups: { items: StoredBlob[]; used: number }[] = [];
  for (const b of uniq) {
    const need = entryBytes(b.size);
    if (need > room)
      throw new FerryError(
        'USAGE',
        `blob ${b.sha256.slice(0, 12)}… (${b.size} bytes) does not fit in a volume of ${volumeSize} bytes`,
      );
    const g = groups.find((x) => x.used + need <= room);
    if (g) {
      g.items.push(b);
      g.used += need;
    } else groups.push({ items: [b], used: need });
  }
  return groups.length ? groups.map((g) => g.items) : [[]];
}

async function writeOne(fh: FileHandle, head: Buffer, blobs: readonly StoredBlob[], mtime: number) {
  const whole = createHash('sha256');
  let pos = 0;
  const put = async (b: Buffer) => {
    whole.update(b);
    await fh.write(b, 0, b.length, pos);
    pos += b.length;
  };
  await put(head);
  for (const blob of blobs) {
    await put(encodeHeader(blobEntryName(blob.sha256), blob.size, mtime));
    const h = createHash('sha256');
    let n = 0;
    for await (const chunk of createReadStream(blob.path, {
      highWaterMark: 1024 * 1024,
    }) as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > blob.size) break;
      h.update(chunk);
      await put(chunk);
    }
    if (n !== blob.size || h.digest('hex') !== blob.sha256)
      throw new FerryError('BLOB_DIGEST_MISMATCH', `stored blob ${blob.sha256} no longer matches its digest`);
    const pad = paddingFor(blob.size);
    if (pad) await put(Buffer.alloc(pad));
  }
  await put(Buffer.alloc(EOF_BYTES));
  await fh.sync();
  return { bytes: pos, sha256: whole.digest('hex') };
}

/** Writes `out` (or its volumes); returns the total size in bytes, the sha256 of the first file and each file. */
export async function writeBundleFromStore(
  out: string,
  envelopeBytes: Buffer,
  blobs: readonly StoredBlob[],
  mtime: number,
  o: { volumeSize?: number } = {},
): Promise<{ bytes: number; sha256: string; volumes: WrittenVolume[] }> {
  const head = encodeHead(envelopeBytes, [], mtime);
  const plan = planVolumes(head.length, blobs, o.volumeSize);
  const temps: string[] = [];
  const volumes: WrittenVolume[] = [];
  try {
    for (const [i, group] of plan.entries()) {
      const path = volumePath(out, i, plan.length);
      const tmp = tempPathFor(path);
      temps.push(tmp);
      const fh = await open(tmp, 'wx', 0o644);
      try {
        const w = await writeOne(fh, head, group, mtime);
        volumes.push({ path, ...w, blobs: group.map((b) => b.sha256) });
      } finally {
        await fh.close();
      }
    }
    for (const [i, v] of volumes.entries()) await rename(temps[i]!, v.path);
    await fsyncDir(dirname(out));
    return { bytes: volumes.reduce((n, v) => n + v.bytes, 0), sha256: volumes[0]!.sha256, volumes };
  } catch (e) {
    for (const t of temps) await rm(t, { force: true });
    throw e;
  }
}
