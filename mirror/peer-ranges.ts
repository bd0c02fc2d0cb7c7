/**
 * One large blob pulled in ranges from several peers at once, like
 * Syncthing's block puller: the blob is cut into ranges, every peer that
 * holds it takes the next range as soon as it is free (so the least busy and
 * the fastest take the most), and the bytes land at their offsets in one
 * partial the size of the blob (`<dir>/<sha256>.ranges.part`). A peer that
 * fails hands its range back to the others.
 *
 * Only the whole blob's digest is signed, so nothing is used until the
 * assembled file matches it. When it does not, some peer served bad bytes:
 * every range is fetched again from another peer and compared. If the blob
 * then matches, each peer whose range differed served bytes that are not the
 * blob's — proven, not guessed — and is reported for back-off. If it still
 * does not match (the peers asked agree on a lie, or too few could be asked),
 * the partial is dropped and the caller pulls the blob whole from one peer at
 * a time, which names the peer at fault by itself (peer-pull.ts).
 *
 * The range list outlives a round in `carried`, so ranges already received
 * are not asked again while the partial is still there.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from '../platform/fsx.js';
import { blobUrl, type SourceOutcome } from '../platform/http/blob.js';
import { HttpClientError } from '../platform/http/errors.js';
import { resolveLimits } from '../platform/http/limits.js';
import { fetchRange } from '../platform/http/range-fetch.js';
import { withRetry } from '../platform/http/retry.js';
import { diskFailure, ensureRoom } from '../platform/http/space.js';
import type { PullOptions, PullPeer, Range } from './pull-types.js';

export type { Range } from './pull-types.js';

export type RangedResult = { path: string; peer: PullPeer } | 'unavailable' | 'whole';

type Fault = Exclude<SourceOutcome, { kind: 'ok' }>;

export const rangedPartName = (digest: string) => `${digest}.ranges.part`;

/** Cuts `size` bytes into ranges of `each` bytes (the last one shorter). */
export function cut(size: number, each: number): Range[] {
  const out: Range[] = [];
  for (let start = 0; start < size; start += each)
    out.push({ start, end: Math.min(size, start + each), by: undefined, sha256: '' });
  return out;
}

export async function pullRanged(
  o: PullOptions,
  blob: { digest: string; size: number },
  holders: (p: PullPeer) => boolean,
): Promise<RangedResult> {
  const { digest, size } = blob;
  const part = join(o.dir, rangedPartName(digest));
  const carried = o.carried ?? new Map<string, Range[]>();
  const kept = carried.get(digest);
  const resumable = kept !== undefined && (await stat(part).catch(() => undefined))?.size === size;
  const ranges = resumable ? kept : cut(size, o.rangeBytes ?? DEFAULT_RANGE_BYTES);
  carried.set(digest, ranges);
  const what = `sha256:${digest.slice(0, 16)}… (${size} bytes)`;
  const left = ranges.reduce((n, r) => n + (r.by ? 0 : r.end - r.start), 0);
  await ensureRoom(o.dir, resumable ? left : size, resolveLimits(o.limits).reserveBytes, what);
  const disk = async (e: unknown) => diskFailure(e, `write ${part}`, o.dir, size);
  let fh: FileHandle;
  try {
    fh = await open(part, constants.O_RDWR | constants.O_CREAT, 0o600);
    if (!resumable) await fh.truncate(size); // the whole blob's room, holes until each range lands
  } catch (e) {
    throw await disk(e);
  }
  let done = false;
  try {
    const log = o.log.child({ blob: digest });
    const job: Job = { o, ranges, fh, blob, holders, disk };
    const received = await fill(job);
    if (!received) return 'unavailable';
    await fh.sync();
    if ((await hashFile(fh, size)) !== digest) {
      log.warn('peer.ranges_mismatch', { ranges: ranges.length });
      const liars = await recheck(job);
      await fh.sync();
      if ((await hashFile(fh, size)) !== digest) {
        log.warn('peer.ranges_unresolved', { fallback: 'whole blob, one peer at a time' });
        carried.delete(digest);
        await rm(part, { force: true });
        done = true;
        return 'whole';
      }
      for (const [p, r] of liars)
        o.onFault(p, {
          kind: 'bad_bytes',
          code: 'BLOB_DIGEST_MISMATCH',
          message: `bytes ${r.start}-${r.end - 1} of sha256:${digest} differ from the blob that matches the signed digest`,
        });
    }
    await fh.close();
    done = true;
    const final = join(o.dir, digest);
    try {
      await rename(part, final);
      await fsyncDir(o.dir);
    } catch (e) {
      throw await diskFailure(e, `rename into ${o.dir}`, o.dir, 0);
    }
    carried.delete(digest);
    const bytes = new Map<PullPeer, number>();
    for (const r of ranges) bytes.set(r.by!, (bytes.get(r.by!) ?? 0) + r.end - r.start);
    const top = [...bytes].sort((a, b) => b[1] - a[1])[0]![0];
    log.info('peer.ranges_fetched', {
      size,
      ranges: ranges.length,
      peers: Object.fromEntries([...bytes].map(([p, n]) => [p.url, n])),
    });
    return { path: final, peer: top };
  } finally {
    if (!done) await fh.close().catch(() => undefined);
  }
}

export const DEFAULT_RANGE_BYTES = 16 * 1024 * 1024;

/** One ranged pull: the partial, its ranges, and who may serve them. */
interface Job {
  o: PullOptions;
  ranges: Range[];
  fh: FileHandle;
  blob: { digest: string; size: number };
  holders: (p: PullPeer) => boolean;
  disk: (e: unknown) => Promise<unknown>;
}

/**
 * Fills every range not yet held, each usable holder taking the next free one. Returns whether all
 * are held; when the last peer able to help fails, the rest stay for a later round.
 */
async function fill(j: Job): Promise<boolean> {
  const { o, ranges, fh, blob, holders, disk } = j;
  const out = new Set<PullPeer>(); // failed, or does not serve it: not asked again this call
  for (;;) {
    const queue = ranges.filter((r) => !r.by);
    if (queue.length === 0) return true;
    const peers = o.peers.filter((p) => holders(p) && o.usable(p) && !out.has(p));
    if (peers.length === 0 || o.signal.aborted) return false;
    let have = ranges.reduce((n, r) => n + (r.by ? r.end - r.start : 0), 0);
    const worker = async (peer: PullPeer) => {
      peer.busy++;
      try {
        for (let r = queue.shift(); r && !o.signal.aborted; r = queue.shift()) {
          const got = await one(o, peer, r, fh, blob, disk, (n) => {
            have += n;
            peer.transfer = { digest: blob.digest, have, total: blob.size };
          });
          if (typeof got !== 'string') {
            queue.unshift(r); // for a peer still working; the next pass if none is
            out.add(peer);
            if (got.kind !== 'not_served' && !o.signal.aborted) o.onFault(peer, got);
            return;
          }
          Object.assign(r, { by: peer, sha256: got });
        }
      } finally {
        peer.busy--;
      }
    };
    // Every worker ends before the file is closed, even when one of them hit our own disk's failure.
    const ends = await Promise.allSettled(peers.map(worker));
    const failed = ends.find((x) => x.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

/** One range from one peer, with a quick retry for a hiccup; a fault of the peer is returned, not thrown. */
async function one(
  o: PullOptions,
  peer: PullPeer,
  r: Range,
  fh: FileHandle,
  blob: { digest: string; size: number },
  disk: (e: unknown) => Promise<unknown>,
  progress: (n: number) => void,
): Promise<string | Fault> {
  try {
    return await withRetry(
      () =>
        fetchRange(blobUrl(peer.url, blob.digest), {
          file: fh,
          start: r.start,
          end: r.end,
          blobSize: blob.size,
          sha256: blob.digest,
          transport: o.transport,
          signal: o.signal,
          onWriteError: disk,
          ...(o.limits && { limits: o.limits }),
          onBytes: (n) => {
            peer.received += n;
            o.onReceived?.(peer, n);
            progress(n);
          },
        }),
      { attempts: 2, baseMs: 200, maxMs: 1000, jitter: true },
    );
  } catch (e) {
    if (!(e instanceof HttpClientError)) throw e; // our own disk: no peer does better
    if (e.code === 'BLOB_SIZE_MISMATCH' || e.code === 'BLOB_DIGEST_MISMATCH')
      return { kind: 'bad_bytes', code: e.code, message: e.message };
    if (e.code === 'HTTP_STATUS' && !e.retryable)
      return { kind: 'not_served', status: e.status, message: e.message };
    return { kind: 'failed', code: e.code, message: e.message };
  }
}

/**
 * Fetches every range again from a peer other than the one that sent it, writing the new bytes in
 * place. Returns the peers whose bytes differed (with one such range each): liars if the blob now
 * matches its digest.
 */
async function recheck(j: Job): Promise<Map<PullPeer, Range>> {
  const { o, ranges, fh, blob, holders, disk } = j;
  const differed = new Map<PullPeer, Range>();
  for (const r of ranges) {
    if (o.signal.aborted) break;
    const first = r.by;
    const other = o.peers
      .filter((p) => p !== first && holders(p) && o.usable(p))
      .sort((a, b) => a.busy - b.busy || a.failures - b.failures)[0];
    if (!other) continue;
    other.busy++;
    const got = await one(o, other, r, fh, blob, disk, () => undefined).finally(() => other.busy--);
    if (typeof got !== 'string') continue; // the final digest check decides
    if (first && got !== r.sha256 && !differed.has(first)) differed.set(first, r);
    Object.assign(r, { by: other, sha256: got });
  }
  return differed;
}

/** sha256 of the file's first `size` bytes, one 4 MiB read at a time. */
async function hashFile(fh: FileHandle, size: number): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  for (let pos = 0; pos < size;) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return hash.digest('hex');
}
