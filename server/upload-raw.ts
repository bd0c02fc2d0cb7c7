/**
 * An API upload: the request body is the file (`application/octet-stream`), streamed to a temp file
 * in the data directory with a size cap, never held in memory. The caller removes it.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Context } from 'koa';
import { tempPathFor } from '../platform/fsx.js';
import { HttpError } from '../platform/http/server-errors.js';

export async function readUploadRaw(
  ctx: Context,
  dataDir: string,
  max: number,
): Promise<{ file: string; cleanup: () => Promise<void> }> {
  if (!ctx.is('application/octet-stream'))
    throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'an artifact upload must be application/octet-stream');
  if (Number(ctx.get('Content-Length') || 0) > max)
    throw new HttpError(413, 'BODY_TOO_LARGE', `an upload is at most ${max} bytes`);
  const dir = join(dataDir, 'tmp');
  await mkdir(dir, { recursive: true });
  const file = tempPathFor(join(dir, 'upload'));
  const cleanup = () => rm(file, { force: true });
  let n = 0;
  const cap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > max) cb(new HttpError(413, 'BODY_TOO_LARGE', `an upload is at most ${max} bytes`));
      else cb(null, chunk);
    },
  });
  try {
    await pipeline(ctx.req, cap, createWriteStream(file, { flags: 'wx', mode: 0o600 }));
  } catch (e) {
    await cleanup();
    if (e instanceof HttpError) throw e;
    throw new HttpError(400, 'BAD_REQUEST', `the upload did not arrive whole: ${(e as Error).message}`);
  }
  return { file, cleanup };
}
