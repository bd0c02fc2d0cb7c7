/**
 * A peer's offer as a bundle stream: the manifest envelope exactly as the peer
 * served it, the root envelopes newer than ours, and the blobs already pulled
 * (each a file in the store's peer-pulls/), in the order and format a bundle file
 * has (core/bundle/tar.ts). import.ts reads it with the same reader, state and
 * checks as a courier's file, so nothing a peer sends skips a check.
 */
import { createReadStream } from 'node:fs';
import { BLOCK, encodeHeader, paddingFor } from '../core/bundle/tar.js';
import { blobEntryName, MANIFEST_ENTRY, rootEntryName } from '../core/bundle/reader.js';

export interface OfferedBlob {
  digest: string;
  size: number;
  path: string;
}

export interface Offer {
  envelopeBytes: Buffer;
  /** Root envelopes, ascending versions. */
  roots: { version: number; bytes: Buffer }[];
  blobs: OfferedBlob[];
}

const ZEROS = Buffer.alloc(BLOCK);

/** The offer as tar bytes, streamed: memory stays at one read chunk whatever the blob sizes. */
export async function* offerSource(o: Offer): AsyncGenerator<Buffer, void, undefined> {
  const mtime = 0;
  yield encodeHeader(MANIFEST_ENTRY, o.envelopeBytes.length, mtime);
  yield o.envelopeBytes;
  yield ZEROS.subarray(0, paddingFor(o.envelopeBytes.length));
  for (const r of o.roots) {
    yield encodeHeader(rootEntryName(r.version), r.bytes.length, mtime);
    yield r.bytes;
    yield ZEROS.subarray(0, paddingFor(r.bytes.length));
  }
  for (const b of o.blobs) {
    yield encodeHeader(blobEntryName(b.digest), b.size, mtime);
    let sent = 0;
    for await (const chunk of createReadStream(b.path, { highWaterMark: 1024 * 1024 })) {
      sent += (chunk as Buffer).length;
      yield chunk as Buffer;
    }
    // A file that changed length under us is caught by the reader (size and digest); say so early.
    if (sent !== b.size) throw new Error(`${b.path} holds ${sent} bytes, not ${b.size}`);
    yield ZEROS.subarray(0, paddingFor(b.size));
  }
  yield ZEROS;
  yield ZEROS;
}
