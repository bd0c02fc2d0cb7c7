import { createReadStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createWriteStream } from 'node:fs';
import { FerryError } from '../core/errors.js';
import { addSignature, countSigners, parseEnvelope, serializeEnvelope } from '../core/dsse.js';
import { decodeBase64Strict } from '../core/encoding.js';
import { checkBundleFile } from '../platform/bundle-file.js';
import { fsyncDir, tempPathFor } from '../platform/fsx.js';
import { MAX_MANIFEST_BYTES } from '../core/manifest.js';
import type { PrivateKey } from '../platform/keyfile.js';
import { MANIFEST_ENTRY } from '../core/bundle/reader.js';
import { BLOCK, decodeHeader, encodeHeader, paddingFor } from '../core/bundle/tar.js';

/**
 * Adds one signature to a bundle's manifest envelope. Only the first entry
 * changes; every byte after it is copied unchanged into a temp file that then
 * replaces the original by rename.
 */
export async function signBundle(
  path: string,
  key: PrivateKey,
): Promise<{ keyid: string; signatures: number }> {
  await checkBundleFile(path);
  const fh = await open(path, 'r');
  let headerBlock: Buffer;
  let envBytes: Buffer;
  let restAt: number;
  let mode: number;
  try {
    mode = (await fh.stat()).mode & 0o777;
    headerBlock = Buffer.alloc(BLOCK);
    const { bytesRead } = await fh.read(headerBlock, 0, BLOCK, 0);
    if (bytesRead !== BLOCK) throw new FerryError('TAR_TRUNCATED', 'file is too short to be a bundle');
    const h = decodeHeader(headerBlock);
    if (h.name !== MANIFEST_ENTRY)
      throw new FerryError('ENTRY_ORDER', `first entry is ${JSON.stringify(h.name)}, not ${MANIFEST_ENTRY}`);
    if (h.size > MAX_MANIFEST_BYTES)
      throw new FerryError('MANIFEST_TOO_LARGE', `manifest envelope is ${h.size} bytes`);
    envBytes = Buffer.alloc(h.size);
    const r = await fh.read(envBytes, 0, h.size, BLOCK);
    if (r.bytesRead !== h.size) throw new FerryError('TAR_TRUNCATED', 'file ends inside the manifest');
    restAt = BLOCK + h.size + paddingFor(h.size);
  } finally {
    await fh.close();
  }
  const env = parseEnvelope(envBytes, 'manifest envelope');
  const body = decodeBase64Strict(env.payload, 'manifest payload');
  if (countSigners(env, body, new Map([[key.keyid, key.publicKey]])).length > 0) {
    throw new FerryError('ALREADY_SIGNED', `bundle is already signed by key ${key.keyid}`);
  }
  const signed = addSignature(env, key);
  const newEnv = Buffer.from(serializeEnvelope(signed));
  const mtime =
    parseInt(
      headerBlock
        .subarray(136, 148)
        .toString('latin1')
        .replace(/[\0 ]+$/, ''),
      8,
    ) || 0;
  const head = Buffer.concat([
    encodeHeader(MANIFEST_ENTRY, newEnv.length, mtime),
    newEnv,
    Buffer.alloc(paddingFor(newEnv.length)),
  ]);

  const tmp = tempPathFor(path);
  try {
    const out = await open(tmp, 'wx', mode);
    await out.write(head, 0, head.length, 0);
    const size = (await stat(path)).size;
    await pipeline(
      createReadStream(path, { start: restAt, highWaterMark: 1024 * 1024 }),
      createWriteStream('', { fd: out, start: head.length, flush: true }),
    );
    const written = (await stat(tmp)).size;
    if (written !== head.length + size - restAt)
      throw new FerryError('IO_ERROR', `copy of ${path} is incomplete`);
    const check = await open(tmp, 'r+');
    await check.sync();
    await check.close();
    await rename(tmp, path);
    await fsyncDir(dirname(path));
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  return { keyid: key.keyid, signatures: signed.signatures.length };
}
