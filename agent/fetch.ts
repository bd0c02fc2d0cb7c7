/**
 * The agent's blob fetcher: content-addressed blobs from its mirrors into its
 * cache, through the shared verified downloader (platform/http/blob.ts), with
 * the agent's own record of which mirrors are failing.
 *
 *   <cacheDir>/blobs/sha256/<hex>   verified blobs (only ever renamed in)
 *   <cacheDir>/tmp/<hex>.part       the download in progress
 *
 * A mirror that trickles is given up on at its total deadline and the next
 * one resumes from the verified prefix; a disk too full for the blob stops the
 * fetch with STORAGE_FULL before a byte is written.
 */
import { join } from 'node:path';
import {
  backoffMs,
  fetchVerifiedBlob,
  type BlobRef,
  type ClientLimits,
  type DownloadOptions,
  type RetryOptions,
  type Transport,
} from '../platform/http/client.js';
import type { Logger } from '../platform/log.js';

export { BlobFetchError, StorageFullError, isStorageFull } from '../platform/http/client.js';
export type { BlobRef } from '../platform/http/client.js';

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
    const delay = backoffMs(failures - 1, { baseMs: this.baseMs, maxMs: this.maxMs, jitter: false });
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

export interface FetchBlobOptions {
  /** Idle timeout per request (ms): connect, head, and between body chunks. */
  timeoutMs: number;
  /** Deadlines, floor rate, disk reserve; defaults in platform/http/limits.ts. */
  limits?: Partial<ClientLimits>;
  /** Retries against one mirror before failing over; default 3 tries, 200 ms → 5 s, full jitter. */
  retry?: Omit<RetryOptions, 'retryIf'>;
  log?: Logger;
  now?: () => number;
  /** Default: the shared node:http transport (the agent never loads undici). */
  transport?: Transport;
  onBytes?: DownloadOptions['onBytes'];
}

export function blobCachePath(cacheDir: string, sha256: string): string {
  return join(cacheDir, 'blobs', 'sha256', sha256);
}

/**
 * Returns the cache path of a verified blob, downloading it first if needed
 * (concurrent calls for one blob share one download). A mirror that serves bad
 * bytes or fails is backed off; one that does not have the blob is not.
 */
export async function fetchBlob(
  mirrors: MirrorSet,
  blob: BlobRef,
  cacheDir: string,
  opts: FetchBlobOptions,
): Promise<string> {
  const now = opts.now ?? Date.now;
  const r = await fetchVerifiedBlob({
    sha256: blob.sha256,
    size: blob.size,
    destDir: join(cacheDir, 'blobs', 'sha256'),
    tmpDir: join(cacheDir, 'tmp'),
    mirrors: mirrors.candidates(now()),
    timeoutMs: opts.timeoutMs,
    ...(opts.limits && { limits: opts.limits }),
    ...(opts.retry && { retry: opts.retry }),
    ...(opts.log && { log: opts.log }),
    ...(opts.transport && { transport: opts.transport }),
    ...(opts.onBytes && { onBytes: opts.onBytes }),
    onOutcome: (mirror, o) => {
      if (o.kind === 'ok') mirrors.markGood(mirror);
      else if (o.kind === 'bad_bytes' || o.kind === 'failed') mirrors.markBad(mirror, o.code, now());
    },
  });
  return r.path;
}
