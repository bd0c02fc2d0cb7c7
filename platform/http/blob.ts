/**
 * A content-addressed blob from a list of mirrors into a directory, verified
 * before it is visible: the one downloader for the agent's cache and for
 * mirrors pulling from peers (both use the mirror API's
 * `GET /v1/blobs/sha256/<hex>`). It knows base URLs, a digest, a size and two
 * directories, nothing of who calls it.
 *
 *   <destDir>/<sha256>        verified blobs (only ever renamed in)
 *   <tmpDir>/<sha256>.part    the download in progress; resumed across calls
 *                             and across sources (same digest, same bytes,
 *                             same ETag everywhere); same filesystem as destDir
 *
 * Each source gets a few quick retries (network, idle timeout, 5xx), then the
 * next one is tried, keeping the verified prefix. A source that serves bad
 * bytes costs the prefix; one past its total deadline keeps it for the next.
 * A full disk stops everything with STORAGE_FULL: checked before the first
 * byte (the bytes still needed plus a reserve must fit), and on ENOSPC the
 * partial file is removed so the space comes back.
 */
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isSha256Hex } from '../../core/encoding.js';
import { fsyncDir } from '../fsx.js';
import { silentLogger, type Logger } from '../log.js';
import { download, type DownloadOptions } from './download.js';
import {
  BlobFetchError,
  HttpClientError,
  StorageFullError,
  type BlobAttempt,
  type HttpClientErrorCode,
} from './errors.js';
import { resolveLimits, type ClientLimits } from './limits.js';
import { withRetry, type RetryOptions } from './retry.js';
import { diskFailure, ensureRoom } from './space.js';
import type { Transport } from './transport.js';

export interface BlobRef {
  sha256: string;
  size: number;
}

/** How one source did, for the caller's own health records (back-off, metrics). */
export type SourceOutcome =
  | { kind: 'ok' }
  /** Bytes that do not match the signed size or digest: the source is at fault. */
  | { kind: 'bad_bytes'; code: HttpClientErrorCode; message: string }
  /** It answered, just not with this blob (404 and the like): no fault. */
  | { kind: 'not_served'; status: number | undefined; message: string }
  /** Network, timeout, deadline, 5xx after its retries. */
  | { kind: 'failed'; code: HttpClientErrorCode; message: string };

export interface VerifiedBlobOptions extends BlobRef {
  destDir: string;
  tmpDir: string;
  /** Base URLs of the mirrors to ask, in this order. */
  mirrors: readonly string[];
  transport?: Transport;
  limits?: Partial<ClientLimits>;
  /** Idle timeout (ms); default limits.idleTimeoutMs. */
  timeoutMs?: number;
  /** Retries against one source before the next; default 3 tries, 200 ms → 5 s, full jitter. */
  retry?: Omit<RetryOptions, 'retryIf'>;
  log?: Logger;
  /** The caller's cancel (a service stopping): the download stops, keeping its verified prefix. */
  signal?: AbortSignal;
  onBytes?: DownloadOptions['onBytes'];
  onOutcome?: (mirror: string, outcome: SourceOutcome) => void;
}

export interface VerifiedBlob {
  path: string;
  /** The mirror that delivered it; undefined when it was already in place. */
  mirror: string | undefined;
  resumedFrom: number;
  received: number;
}

const DEFAULT_RETRY: Omit<RetryOptions, 'retryIf'> = { attempts: 3, baseMs: 200, maxMs: 5_000, jitter: true };

const isBadBytes = (code: string) => code === 'BLOB_DIGEST_MISMATCH' || code === 'BLOB_SIZE_MISMATCH';

/** Where a mirror serves a blob (the same route for agents and peer mirrors). */
export function blobUrl(mirror: string, sha256: string): string {
  return `${mirror.replace(/\/+$/, '')}/v1/blobs/sha256/${sha256}`;
}

const inFlight = new Map<string, Promise<VerifiedBlob>>();

/**
 * The path of the verified blob `<destDir>/<sha256>`, downloading it first if
 * needed. Concurrent calls for the same destination share one download.
 */
export function fetchVerifiedBlob(o: VerifiedBlobOptions): Promise<VerifiedBlob> {
  if (!isSha256Hex(o.sha256) || !Number.isSafeInteger(o.size) || o.size < 0)
    return Promise.reject(
      new BlobFetchError('BLOB_REF_INVALID', `not a blob reference: sha256:${o.sha256} (${o.size} bytes)`),
    );
  const final = join(o.destDir, o.sha256);
  const running = inFlight.get(final);
  if (running) return running;
  const p = fetchOnce(o, final).finally(() => inFlight.delete(final));
  inFlight.set(final, p);
  return p;
}

const sizeOf = async (p: string) => (await stat(p).catch(() => undefined))?.size ?? 0;

async function fetchOnce(o: VerifiedBlobOptions, final: string): Promise<VerifiedBlob> {
  const { sha256, size } = o;
  const log = (o.log ?? silentLogger).child({ blob: sha256 });
  const limits = resolveLimits(o.limits);
  const cached = await stat(final).catch(() => undefined);
  if (cached?.isFile() && cached.size === size)
    return { path: final, mirror: undefined, resumedFrom: size, received: 0 };
  if (cached) await rm(final, { force: true }); // wrong size: not what a verified rename left

  const part = join(o.tmpDir, `${sha256}.part`);
  const what = `sha256:${sha256.slice(0, 16)}… (${size} bytes)`;
  const attempts: BlobAttempt[] = [];
  let made = false;
  for (const base of o.mirrors) {
    const mirror = base.replace(/\/+$/, '');
    const url = blobUrl(mirror, sha256);
    // Before any byte, for every source: another process may have taken the space meanwhile.
    await ensureRoom(o.tmpDir, size - (await sizeOf(part)), limits.reserveBytes, what);
    if (!made) {
      for (const d of [o.destDir, o.tmpDir])
        await mkdir(d, { recursive: true }).catch(async (e: unknown) => {
          throw await diskFailure(e, `mkdir ${d}`, d, size);
        });
      made = true;
    }
    const get = () =>
      withRetry(
        () =>
          download(url, part, {
            expectedSize: size,
            expectedSha256: sha256,
            limits,
            ...(o.timeoutMs !== undefined && { timeoutMs: o.timeoutMs }),
            ...(o.transport && { transport: o.transport }),
            ...(o.signal && { signal: o.signal }),
            ...(o.onBytes && { onBytes: o.onBytes }),
          }),
        {
          ...(o.retry ?? DEFAULT_RETRY),
          onRetry: (e, attempt, delayMs) =>
            log.info('blob.retry', {
              mirror,
              attempt,
              delayMs,
              error: e instanceof Error ? e.message : String(e),
            }),
        },
      );
    try {
      let result;
      try {
        result = await get();
      } catch (e) {
        // A bad prefix kept from another source or an earlier run would make this source look bad:
        // before blaming it, try once more from scratch.
        if (!(e instanceof HttpClientError) || !isBadBytes(e.code) || !e.resumedFrom) throw e;
        log.warn('blob.resume_mismatch', { mirror, resumedFrom: e.resumedFrom, code: e.code });
        await rm(part, { force: true });
        result = await get();
      }
      try {
        await rename(part, final);
        await fsyncDir(o.destDir);
      } catch (e) {
        throw await diskFailure(e, `rename into ${o.destDir}`, o.destDir, 0);
      }
      o.onOutcome?.(mirror, { kind: 'ok' });
      log.info('blob.fetched', { mirror, size, resumedFrom: result.resumedFrom, received: result.received });
      return { path: final, mirror, ...result };
    } catch (e) {
      if (e instanceof StorageFullError) {
        // The disk filled under us: give the space back, so the rest of the node keeps working.
        await rm(part, { force: true });
        log.error('blob.storage_full', {
          mirror,
          path: e.path,
          needBytes: e.needBytes,
          freeBytes: e.freeBytes,
        });
        throw e;
      }
      if (!(e instanceof HttpClientError)) throw e; // our own disk (IO_ERROR): no source will do better
      attempts.push({ mirror, code: e.code, message: e.message });
      if (isBadBytes(e.code)) {
        await rm(part, { force: true });
        log.warn('blob.bad_bytes', { mirror, code: e.code, error: e.message });
        o.onOutcome?.(mirror, { kind: 'bad_bytes', code: e.code, message: e.message });
      } else if (e.code === 'HTTP_STATUS' && !e.retryable) {
        log.info('blob.not_served', { mirror, status: e.status });
        o.onOutcome?.(mirror, { kind: 'not_served', status: e.status, message: e.message });
      } else {
        log.warn('blob.mirror_failed', { mirror, code: e.code, error: e.message });
        o.onOutcome?.(mirror, { kind: 'failed', code: e.code, message: e.message });
      }
    }
  }
  throw new BlobFetchError(
    'BLOB_UNAVAILABLE',
    `no mirror delivered sha256:${sha256}: ${attempts.map((a) => `${a.mirror} ${a.code}`).join(', ') || 'none to ask'}`,
    attempts,
  );
}
