/**
 * One resumable, verified download from one URL into a caller-owned temp
 * file: bytes already there are hashed and kept, only the rest is asked for
 * (`Range` with `If-Range: "<sha256>"`; a 200 starts the file over), nothing
 * past the signed size is written, and at the end the whole file must be the
 * signed size with the signed sha256, fsynced. On failure the file keeps its
 * verified-so-far prefix for a later resume; on a digest or size mismatch the
 * caller deletes it. blob.ts drives this over a list of sources.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CodedError } from '../../core/errors.js';
import { HttpClientError } from './errors.js';
import { deadlineFor, resolveLimits } from './limits.js';
import { exchange, statusError, type BaseOptions } from './request.js';
import { diskFailure } from './space.js';

export interface DownloadOptions extends BaseOptions {
  /** The signed size: nothing past it is written; a body of another length is refused. */
  expectedSize: number;
  /** The signed sha256 (lowercase hex); also the mirror's ETag, sent as If-Range when resuming. */
  expectedSha256: string;
  /** Progress: bytes held so far, the total, and how many arrived in this chunk. */
  onBytes?: (have: number, total: number, received: number) => void;
}

export interface DownloadResult {
  /** Bytes kept from an earlier attempt (0 for a fresh download or a restart). */
  resumedFrom: number;
  /** Bytes received over the network by this call. */
  received: number;
}

const READ_CHUNK = 1024 * 1024;

/** Hashes the first `length` bytes of `fh` into `hash` without holding more than one chunk. */
async function hashPrefix(fh: FileHandle, length: number, hash: Hash): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(length, 1)));
  let pos = 0;
  while (pos < length) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, length - pos), pos);
    if (bytesRead === 0) throw new HttpClientError('HTTP_NETWORK', 'partial file shrank while hashing it');
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
}

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

/** Bytes written between two background flushes. */
const SYNC_EVERY = 64 * 1024 * 1024;

/**
 * Flushes the file to disk in the background as it grows (one fdatasync in flight, every
 * SYNC_EVERY bytes), so the fsync that ends a download only has the last stretch to write instead
 * of the whole blob. Durability still rests on that final fsync; a failed background flush is
 * left for it to report.
 */
class BackgroundSync {
  private next = SYNC_EVERY;
  private running: Promise<void> | undefined;

  constructor(private readonly fh: FileHandle) {}

  wrote(offset: number): void {
    if (offset < this.next || this.running) return;
    this.next = offset + SYNC_EVERY;
    this.running = this.fh.datasync().then(
      () => void (this.running = undefined),
      () => void (this.running = undefined),
    );
  }

  /** Waits for a flush in flight (the handle must not close under it). */
  async settle(): Promise<void> {
    await this.running;
  }
}

/** Streams `url` into `destPath` (see the file comment). The deadline defaults to the bytes still missing at the floor rate. */
export async function download(
  url: string,
  destPath: string,
  opts: DownloadOptions,
): Promise<DownloadResult> {
  const { expectedSize, expectedSha256 } = opts;
  if (!Number.isSafeInteger(expectedSize) || expectedSize < 0)
    throw new HttpClientError('BLOB_SIZE_MISMATCH', `expected size ${expectedSize} is not a byte count`);
  const dir = dirname(destPath);
  let have = 0;
  const disk = async (e: unknown, what: string) => diskFailure(e, what, dir, expectedSize - have);
  let fh: FileHandle;
  try {
    fh = await open(destPath, constants.O_RDWR | constants.O_CREAT, 0o600);
  } catch (e) {
    throw await disk(e, `open ${destPath}`);
  }
  let resumedFrom = 0;
  try {
    have = (await fh.stat()).size;
    let hash = createHash('sha256');
    if (have > expectedSize) {
      await fh.truncate(0); // longer than the signed size: cannot be a prefix of the blob
      have = 0;
    } else if (have > 0) {
      await hashPrefix(fh, have, hash);
    }
    if (have === expectedSize) {
      // Complete already (an earlier call was cut after the last byte): verify, or start over.
      if (hash.copy().digest('hex') === expectedSha256) {
        await fh.sync();
        opts.onBytes?.(have, expectedSize, 0);
        return { resumedFrom: have, received: 0 };
      }
      await fh.truncate(0);
      have = 0;
      hash = createHash('sha256');
    }
    resumedFrom = have;

    const headers: Record<string, string> = { ...opts.headers, 'accept-encoding': 'identity' };
    if (have > 0) {
      headers.range = `bytes=${have}-`;
      headers['if-range'] = `"${expectedSha256}"`;
    }
    const deadlineMs = opts.deadlineMs ?? deadlineFor(expectedSize - have, resolveLimits(opts.limits));
    const { res, touch, done, fail } = await exchange(url, { ...opts, headers, deadlineMs });
    let clean = false;
    let received = 0;
    const flusher = new BackgroundSync(fh);
    try {
      const { status } = res;
      const declared =
        res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
      if (status === 416 && have > 0) {
        // The source's blob is no longer than what we hold, which is shorter than the signed size.
        throw new HttpClientError(
          'BLOB_SIZE_MISMATCH',
          `${url}: server has fewer than ${have + 1} bytes, signed size is ${expectedSize}`,
        );
      }
      if (status === 206 && have > 0) {
        const m = CONTENT_RANGE.exec(String(res.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== have)
          throw new HttpClientError(
            'HTTP_STATUS',
            `${url}: 206 with Content-Range ${String(res.headers['content-range'])} for bytes=${have}-`,
            { status },
          );
        if (m[3] !== '*' && Number(m[3]) !== expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: server's blob is ${m[3]} bytes, signed size is ${expectedSize}`,
          );
        if (declared !== undefined && have + declared > expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: ${have} + ${declared} bytes is more than the signed ${expectedSize}`,
          );
      } else if (status === 200) {
        if (declared !== undefined && declared !== expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: server sends ${declared} bytes, signed size is ${expectedSize}`,
          );
        if (have > 0) {
          // The server ignored the range (or our validator): start over.
          await fh.truncate(0).catch(async (e: unknown) => {
            throw await disk(e, `truncate ${destPath}`);
          });
          have = 0;
          resumedFrom = 0;
          hash = createHash('sha256');
        }
      } else {
        throw statusError(url, status);
      }

      // for-await pauses the connection while a write is pending: memory stays at one chunk.
      for await (const chunk of res.body) {
        touch();
        if (have + chunk.length > expectedSize)
          throw new HttpClientError(
            'BLOB_SIZE_MISMATCH',
            `${url}: more than the signed ${expectedSize} bytes`,
          );
        hash.update(chunk);
        let off = 0;
        while (off < chunk.length) {
          const { bytesWritten } = await fh
            .write(chunk, off, chunk.length - off, have + off)
            .catch(async (e: unknown) => {
              throw await disk(e, `write ${destPath}`);
            });
          off += bytesWritten;
        }
        have += chunk.length;
        received += chunk.length;
        flusher.wrote(have);
        opts.onBytes?.(have, expectedSize, chunk.length);
      }
      clean = true;
    } catch (e) {
      throw fail(e);
    } finally {
      done(!clean);
      await flusher.settle();
    }
    if (have !== expectedSize)
      throw new HttpClientError(
        'BLOB_SIZE_MISMATCH',
        `${url}: body ended at ${have} bytes, signed size is ${expectedSize}`,
      );
    const got = hash.digest('hex');
    if (got !== expectedSha256)
      throw new HttpClientError(
        'BLOB_DIGEST_MISMATCH',
        `${url}: sha256 is ${got}, signed digest is ${expectedSha256}`,
      );
    await fh.sync();
    return { resumedFrom, received };
  } catch (e) {
    if (e instanceof HttpClientError) {
      e.resumedFrom ??= resumedFrom;
      throw e;
    }
    // Network failures were coded where they happened; anything else here is our own disk.
    if (e instanceof CodedError) throw e;
    throw await disk(e, destPath);
  } finally {
    await fh.close();
  }
}
