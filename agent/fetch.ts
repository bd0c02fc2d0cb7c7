/**
 * The agent's blob fetcher: content-addressed blobs from a list of mirrors
 * into the agent's cache, each verified against the signed digest and size
 * before it is moved into place (CONVENTIONS 9).
 *
 *   <cacheDir>/blobs/sha256/<hex>   verified blobs (only ever renamed in)
 *   <cacheDir>/tmp/<hex>.part       the download in progress; resumed across
 *                                   calls and across mirrors (same digest,
 *                                   same bytes, same ETag everywhere)
 */
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isSha256Hex } from '../core/encoding.js';
import { fsyncDir } from '../platform/fsx.js';
import {
  download,
  isHttpClientError,
  withRetry,
  type DownloadOptions,
  type HttpClientErrorCode,
  type RetryOptions,
} from '../platform/http/client.js';
import { silentLogger, type Logger } from '../platform/log.js';

export interface MirrorSetOptions {
  /** Back-off after the first failure (ms); doubles per repeated failure. */
  baseBackoffMs?: number;
  /** Largest back-off (ms). */
  maxBackoffMs?: number;
}

interface MirrorHealth {
  failures: number;
  until: number;
  reason: string;
}

/**
 * Several mirrors, tried in the order given. A mirror that failed is backed
 * off (30 s, 1 min, 2 min, … up to 10 min by default) and skipped until then.
 */
export class MirrorSet {
  readonly urls: readonly string[];
  private readonly health = new Map<string, MirrorHealth>();
  private readonly baseMs: number;
  private readonly maxMs: number;

  constructor(urls: readonly string[], opts: MirrorSetOptions = {}) {
    if (urls.length === 0) throw new Error('MirrorSet needs at least one mirror URL');
    this.urls = urls.map((u) => u.replace(/\/+$/, ''));
    this.baseMs = opts.baseBackoffMs ?? 30_000;
    this.maxMs = opts.maxBackoffMs ?? 600_000;
  }

  private key(url: string): string {
    return url.replace(/\/+$/, '');
  }

  /** Puts `url` in back-off; each repeated failure doubles it, up to the cap. */
  markBad(url: string, reason: string, now = Date.now()): void {
    const k = this.key(url);
    const failures = (this.health.get(k)?.failures ?? 0) + 1;
    const delay = Math.min(this.maxMs, this.baseMs * 2 ** (failures - 1));
    this.health.set(k, { failures, until: now + delay, reason });
  }

  /** How many failures in a row `url` has had (0 when healthy). */
  failures(url: string): number {
    return this.health.get(this.key(url))?.failures ?? 0;
  }

  /** Clears the back-off of a mirror that just served something. */
  markGood(url: string): void {
    this.health.delete(this.key(url));
  }

  /** When `url`'s back-off ends and why it started, or undefined when it is usable. */
  backoff(url: string, now = Date.now()): { until: number; failures: number; reason: string } | undefined {
    const h = this.health.get(this.key(url));
    return h && h.until > now ? { ...h } : undefined;
  }

  /** Usable mirrors in the given order; when all are backed off, the one whose back-off ends first. */
  candidates(now = Date.now()): string[] {
    const usable = this.urls.filter((u) => !this.backoff(u, now));
    if (usable.length > 0) return usable;
    let best = this.urls[0]!;
    for (const u of this.urls) if (this.health.get(u)!.until < this.health.get(best)!.until) best = u;
    return [best];
  }
}

export interface BlobRef {
  sha256: string;
  size: number;
}

export interface FetchBlobOptions {
  /** Idle timeout per request (ms): connect, head, and between body chunks. */
  timeoutMs: number;
  /** Retries against one mirror before failing over; default 3 tries, 200 ms → 5 s, full jitter. */
  retry?: Omit<RetryOptions, 'retryIf'>;
  log?: Logger;
  now?: () => number;
  agent?: DownloadOptions['agent'];
  onBytes?: DownloadOptions['onBytes'];
}

export type BlobFetchErrorCode = 'BLOB_UNAVAILABLE' | 'BLOB_REF_INVALID';

/** Every mirror was tried and none delivered the blob; `attempts` says what each did. */
export class BlobFetchError extends Error {
  readonly code: BlobFetchErrorCode;
  readonly attempts: { mirror: string; code: HttpClientErrorCode | 'IO_ERROR'; message: string }[];

  constructor(code: BlobFetchErrorCode, message: string, attempts: BlobFetchError['attempts'] = []) {
    super(message);
    this.name = 'BlobFetchError';
    this.code = code;
    this.attempts = attempts;
  }
}

const DEFAULT_RETRY: Omit<RetryOptions, 'retryIf'> = { attempts: 3, baseMs: 200, maxMs: 5_000, jitter: true };

/** Bad bytes: the mirror is at fault, and the partial file cannot be trusted. */
const isBadBytes = (code: string) => code === 'BLOB_DIGEST_MISMATCH' || code === 'BLOB_SIZE_MISMATCH';

export function blobCachePath(cacheDir: string, sha256: string): string {
  return join(cacheDir, 'blobs', 'sha256', sha256);
}

const inFlight = new Map<string, Promise<string>>();

/**
 * Returns the cache path of a verified blob, downloading it first if needed.
 * Concurrent calls for the same blob and cache share one download.
 */
export function fetchBlob(
  mirrors: MirrorSet,
  blob: BlobRef,
  cacheDir: string,
  opts: FetchBlobOptions,
): Promise<string> {
  if (!isSha256Hex(blob.sha256) || !Number.isSafeInteger(blob.size) || blob.size < 0)
    return Promise.reject(
      new BlobFetchError(
        'BLOB_REF_INVALID',
        `not a blob reference: sha256:${blob.sha256} (${blob.size} bytes)`,
      ),
    );
  const final = blobCachePath(cacheDir, blob.sha256);
  const running = inFlight.get(final);
  if (running) return running;
  const p = fetchBlobOnce(mirrors, blob, cacheDir, final, opts).finally(() => inFlight.delete(final));
  inFlight.set(final, p);
  return p;
}

async function fetchBlobOnce(
  mirrors: MirrorSet,
  { sha256, size }: BlobRef,
  cacheDir: string,
  final: string,
  opts: FetchBlobOptions,
): Promise<string> {
  const log = (opts.log ?? silentLogger).child({ blob: sha256 });
  const now = opts.now ?? Date.now;
  const cached = await stat(final).catch(() => undefined);
  if (cached?.isFile() && cached.size === size) return final;
  if (cached) await rm(final, { force: true }); // wrong size: not what a verified rename left

  const blobsDir = join(cacheDir, 'blobs', 'sha256');
  const tmpDir = join(cacheDir, 'tmp');
  await mkdir(blobsDir, { recursive: true });
  await mkdir(tmpDir, { recursive: true });
  const part = join(tmpDir, `${sha256}.part`);
  const attempts: BlobFetchError['attempts'] = [];

  for (const mirror of mirrors.candidates(now())) {
    const url = `${mirror}/v1/blobs/sha256/${sha256}`;
    const get = () =>
      withRetry(
        () =>
          download(url, part, {
            expectedSize: size,
            expectedSha256: sha256,
            timeoutMs: opts.timeoutMs,
            ...(opts.agent && { agent: opts.agent }),
            ...(opts.onBytes && { onBytes: opts.onBytes }),
          }),
        {
          ...(opts.retry ?? DEFAULT_RETRY),
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
        // A bad prefix kept from another mirror or an earlier run would make this mirror look bad:
        // before blaming it, try once more from scratch.
        if (!isHttpClientError(e) || !isBadBytes(e.code) || !e.resumedFrom) throw e;
        log.warn('blob.resume_mismatch', { mirror, resumedFrom: e.resumedFrom, code: e.code });
        await rm(part, { force: true });
        result = await get();
      }
      await rename(part, final);
      await fsyncDir(blobsDir);
      mirrors.markGood(mirror);
      log.info('blob.fetched', { mirror, size, resumedFrom: result.resumedFrom, received: result.received });
      return final;
    } catch (e) {
      const code = isHttpClientError(e) ? e.code : 'IO_ERROR';
      const message = e instanceof Error ? e.message : String(e);
      attempts.push({ mirror, code, message });
      if (isBadBytes(code)) {
        await rm(part, { force: true });
        mirrors.markBad(mirror, code, now());
        log.warn('blob.bad_bytes', { mirror, code, error: message });
      } else if (isHttpClientError(e) && e.code === 'HTTP_STATUS' && !e.retryable) {
        // The mirror answered, just not with this blob (404 and the like): no back-off, keep the prefix.
        log.info('blob.not_served', { mirror, status: e.status });
      } else if (code === 'IO_ERROR') {
        throw e; // our own disk, not the mirror: no other mirror will do better
      } else {
        mirrors.markBad(mirror, code, now());
        log.warn('blob.mirror_failed', { mirror, code, error: message });
      }
    }
  }
  throw new BlobFetchError(
    'BLOB_UNAVAILABLE',
    `no mirror delivered sha256:${sha256}: ${attempts.map((a) => `${a.mirror} ${a.code}`).join(', ')}`,
    attempts,
  );
}
