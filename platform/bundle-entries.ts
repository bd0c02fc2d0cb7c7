import { open } from 'node:fs/promises';
import { FerryError } from '../core/errors.js';
import { BLOCK, decodeHeader, isZeroBlock, paddingFor } from '../core/bundle/tar.js';

export interface EntryInfo {
  name: string;
  size: number;
  offset: number; // where the body starts
}

/**
 * Lists a bundle's entries by reading headers only (seeking over bodies).
 * For a delta's base and a delta's completeness, which need names, not contents; nothing here is trusted.
 */
export async function listEntries(path: string): Promise<EntryInfo[]> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const out: EntryInfo[] = [];
    const h = Buffer.alloc(BLOCK);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(h, 0, BLOCK, pos);
      if (bytesRead !== BLOCK)
        throw new FerryError('TAR_TRUNCATED', `${path} ends without an end-of-archive marker`);
      if (isZeroBlock(h)) return out;
      const e = decodeHeader(h);
      out.push({ name: e.name, size: e.size, offset: pos + BLOCK });
      pos += BLOCK + e.size + paddingFor(e.size);
      if (pos > size) throw new FerryError('TAR_TRUNCATED', `${path} ends inside ${e.name}`);
    }
  } finally {
    await fh.close();
  }
}

/** Digests of the blobs a bundle file carries. */
export async function blobDigestsIn(path: string): Promise<Set<string>> {
  const set = new Set<string>();
  for (const e of await listEntries(path)) {
    const m = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(e.name);
    if (m) set.add(m[1]!);
  }
  return set;
}
