/**
 * A multipart form with one file (the UI's artifact upload), streamed to a temp file in the data
 * directory with a size cap: the bytes are never held in memory. The caller checks the fields (and
 * the CSRF token) before anything is stored, and removes the temp file whatever happens.
 */
import busboy from 'busboy';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Context } from 'koa';
import { tempPathFor } from '../../platform/fsx.js';
import { HttpError } from '../../platform/http/server-errors.js';

export interface Upload {
  fields: Record<string, string>;
  /** The temp file holding the upload (absent when no file was sent). */
  file?: string;
  cleanup(): Promise<void>;
}

export async function readUpload(ctx: Context, tmpDir: string, maxFileBytes: number): Promise<Upload> {
  if (!ctx.is('multipart/form-data'))
    throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'an upload must be multipart/form-data');
  await mkdir(tmpDir, { recursive: true });
  const fields: Record<string, string> = Object.create(null) as Record<string, string>;
  let file: string | undefined;
  const cleanup = async () => {
    if (file) await rm(file, { force: true });
  };
  let bb: busboy.Busboy;
  try {
    bb = busboy({
      headers: ctx.req.headers,
      limits: { files: 1, fields: 20, fieldSize: 4096, fileSize: maxFileBytes },
    });
  } catch (e) {
    throw new HttpError(400, 'BAD_REQUEST', `not a multipart form: ${(e as Error).message}`);
  }
  let failure: HttpError | undefined;
  const writes: Promise<void>[] = [];
  bb.on('field', (name, value, info) => {
    if (info.valueTruncated) failure ??= new HttpError(400, 'BAD_REQUEST', `form field ${name} is too long`);
    else if (Object.hasOwn(fields, name))
      failure ??= new HttpError(400, 'BAD_REQUEST', `form field ${name} given twice`);
    else fields[name] = value;
  });
  bb.on('file', (name, stream) => {
    if (name !== 'file' || file) {
      stream.resume();
      failure ??= new HttpError(400, 'BAD_REQUEST', 'one file, in the field named file');
      return;
    }
    const path = tempPathFor(join(tmpDir, 'upload'));
    file = path;
    stream.on(
      'limit',
      () => (failure ??= new HttpError(413, 'BODY_TOO_LARGE', `an upload is at most ${maxFileBytes} bytes`)),
    );
    writes.push(pipeline(stream, createWriteStream(path, { flags: 'wx', mode: 0o600 })));
  });
  bb.on('filesLimit', () => (failure ??= new HttpError(400, 'BAD_REQUEST', 'one file per upload')));
  bb.on('fieldsLimit', () => (failure ??= new HttpError(400, 'BAD_REQUEST', 'too many form fields')));
  try {
    await pipeline(ctx.req, bb);
    await Promise.all(writes);
  } catch (e) {
    await cleanup();
    if (e instanceof HttpError) throw e;
    throw new HttpError(400, 'BAD_REQUEST', `the upload did not arrive whole: ${(e as Error).message}`);
  }
  if (failure) {
    await cleanup();
    throw failure;
  }
  return { fields, ...(file && { file }), cleanup };
}
