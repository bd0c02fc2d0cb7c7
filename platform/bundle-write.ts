/**
 * Writes a bundle whose blobs already sit on disk under their digests (a store): the head
 * (core/bundle/head.ts), each blob as `blobs/sha256/<hex>` streamed and re-hashed on the way (a blob
 * that no longer matches its name stops the write), the end-of-archive blocks. The file appears only
 * by rename after fsync, so a crash or a refusal leaves nothing half-written at `out`.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { blobEntryName } from '../core/bundle/reader.js';
import { encodeHead } from '../core/bundle/head.js';
import { BLOCK, encodeHeader, paddingFor } from '../core/bundle/tar.js';
import { FerryError } from '../core/errors.js';
import { fsyncDir, tempPathFor } from './fsx.js';

export interface StoredBlob {
  sha256: string;
  size: number;
  path: string;
}

/** Writes `out`; returns its size in bytes and its sha256. */
export async function writeBundleFromStore(
  out: string,
  envelopeBytes: Buffer,
  blobs: readonly StoredBlob[],
  mtime: number,
): Promise<{ bytes: number; sha256: string }> {
  const tmp = tempPathFor(out);
  const fh = await open(tmp, 'wx', 0o644);
  const whole = createHash('sha256');
  let pos = 0;
  const put = async (b: Buffer) => {
    whole.update(b);
    await fh.write(b, 0, b.length, pos);
    pos += b.length;
  };
  try {
    await put(encodeHead(envelopeBytes, [], mtime));
    const seen = new Set<string>();
    for (const blob of blobs) {
      if (seen.has(blob.sha256)) continue;
      seen.add(blob.sha256);
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
        throw new FerryError(
          'BLOB_DIGEST_MISMATCH',
          `stored blob ${blob.sha256} no longer matches its digest`,
        );
      const pad = paddingFor(blob.size);
      if (pad) await put(Buffer.alloc(pad));
    }
    await put(Buffer.alloc(2 * BLOCK));
    await fh.sync();
    await fh.close();
    await rename(tmp, out);
    await fsyncDir(dirname(out));
    return { bytes: pos, sha256: whole.digest('hex') };
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw e;
  }
}
