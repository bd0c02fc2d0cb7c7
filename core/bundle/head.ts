/**
 * The head of every bundle file, in the order the format fixes (docs/bundle-format.md): the manifest
 * entry, then the root entries. Pure bytes, shared by everything that writes bundles.
 */
import { MANIFEST_ENTRY, rootEntryName } from './reader.js';
import { encodeHeader, paddingFor } from './tar.js';

/** The manifest entry followed by the root entries, as one buffer. */
export function encodeHead(
  envelopeBytes: Buffer,
  roots: readonly { version: number; bytes: Buffer }[],
  mtime: number,
): Buffer {
  const parts: Buffer[] = [];
  const add = (name: string, bytes: Buffer) => {
    parts.push(encodeHeader(name, bytes.length, mtime), bytes, Buffer.alloc(paddingFor(bytes.length)));
  };
  add(MANIFEST_ENTRY, envelopeBytes);
  for (const r of roots) add(rootEntryName(r.version), r.bytes);
  return Buffer.concat(parts);
}

/** The file name of volume `index` (0-based) of `count`: `out` itself when there is one. */
export function volumePath(out: string, index: number, count: number): string {
  if (count === 1) return out;
  const stem = out.endsWith('.ferry') ? out.slice(0, -'.ferry'.length) : out;
  return `${stem}.vol${index + 1}.ferry`;
}
