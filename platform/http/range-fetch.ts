/**
 * One byte range of a content-addressed blob from one URL, written in place
 * into a caller-owned file (a partial the size of the whole blob, filled by
 * several sources at once). A range cannot be checked on its own — only the
 * whole blob's digest is signed — so this returns the sha256 of the range's
 * bytes: the caller checks the assembled file against the signed digest and,
 * when it does not match, compares ranges fetched from different sources to
 * find the one that lied. Nothing past the range is written; a source that
 * ignores the range, names another one, or sends more or fewer bytes is
 * refused with a coded error (BLOB_SIZE_MISMATCH for wrong bytes).
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { CodedError } from '../../core/errors.js';
import { HttpClientError } from './errors.js';
import { deadlineFor, resolveLimits } from './limits.js';
import { exchange, statusError, type BaseOptions } from './request.js';

export interface RangeOptions extends BaseOptions {
  /** The partial: bytes land at their own offsets. */
  file: FileHandle;
  /** First byte and one past the last (end ≤ blobSize). */
  start: number;
  end: number;
  /** The signed size of the whole blob. */
  blobSize: number;
  /** The signed sha256: the blob's ETag, sent as If-Range so a source holding other bytes refuses. */
  sha256: string;
  /** Called with each chunk's length as it is written. */
  onBytes?: (received: number) => void;
  /** A write failed: the error to throw (the caller's disk check). */
  onWriteError?: (e: unknown) => Promise<unknown>;
}

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

/** Streams `url`'s bytes [start, end) into the file at the same offsets; resolves with their sha256. */
export async function fetchRange(url: string, o: RangeOptions): Promise<string> {
  const { start, end, blobSize } = o;
  if (!(
    Number.isSafeInteger(start) &&
    Number.isSafeInteger(end) &&
    0 <= start &&
    start < end &&
    end <= blobSize
  ))
    throw new HttpClientError(
      'BLOB_SIZE_MISMATCH',
      `not a range of a ${blobSize}-byte blob: ${start}-${end}`,
    );
  const length = end - start;
  const headers: Record<string, string> = {
    ...o.headers,
    'accept-encoding': 'identity',
    range: `bytes=${start}-${end - 1}`,
    'if-range': `"${o.sha256}"`,
  };
  const deadlineMs = o.deadlineMs ?? deadlineFor(length, resolveLimits(o.limits));
  const { res, touch, done, fail } = await exchange(url, { ...o, headers, deadlineMs });
  let clean = false;
  try {
    if (res.status === 416)
      throw new HttpClientError('BLOB_SIZE_MISMATCH', `${url}: the source has no bytes ${start}-${end - 1}`);
    if (res.status !== 206) {
      if (res.status === 200)
        // The whole blob instead of the range (or another validator): not usable as a range source.
        throw new HttpClientError('HTTP_STATUS', `${url}: 200 for a range request`, { status: 200 });
      throw statusError(url, res.status);
    }
    const m = CONTENT_RANGE.exec(String(res.headers['content-range'] ?? ''));
    if (!m || Number(m[1]) !== start || Number(m[2]) !== end - 1)
      throw new HttpClientError(
        'BLOB_SIZE_MISMATCH',
        `${url}: Content-Range ${String(res.headers['content-range'])} for bytes=${start}-${end - 1}`,
      );
    if (m[3] !== '*' && Number(m[3]) !== blobSize)
      throw new HttpClientError(
        'BLOB_SIZE_MISMATCH',
        `${url}: blob of ${m[3]} bytes, signed size is ${blobSize}`,
      );
    const declared = res.headers['content-length'];
    if (declared !== undefined && Number(declared) !== length)
      throw new HttpClientError(
        'BLOB_SIZE_MISMATCH',
        `${url}: ${String(declared)} bytes for a ${length}-byte range`,
      );
    const hash = createHash('sha256');
    let got = 0;
    for await (const chunk of res.body) {
      touch();
      if (got + chunk.length > length)
        throw new HttpClientError('BLOB_SIZE_MISMATCH', `${url}: more than the ${length} bytes of the range`);
      hash.update(chunk);
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await o.file
          .write(chunk, off, chunk.length - off, start + got + off)
          .catch(async (e: unknown) => {
            throw o.onWriteError ? await o.onWriteError(e) : e;
          });
        off += bytesWritten;
      }
      got += chunk.length;
      o.onBytes?.(chunk.length);
    }
    if (got !== length)
      throw new HttpClientError(
        'BLOB_SIZE_MISMATCH',
        `${url}: range body ended at ${got} of ${length} bytes`,
      );
    clean = true;
    return hash.digest('hex');
  } catch (e) {
    if (e instanceof CodedError) throw e;
    throw fail(e);
  } finally {
    done(!clean);
  }
}
