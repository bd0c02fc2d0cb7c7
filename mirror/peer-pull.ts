/**
 * Pulls the blobs a manifest names and the store lacks from the peers that
 * hold them, several at once. A large blob that several usable peers hold is
 * pulled in ranges from all of them at once (peer-ranges.ts); any other blob
 * goes whole to the least-busy peer that holds
 * it (fewest transfers under way, then fewest recent failures), and when that
 * peer fails or serves bytes that do not match the signed digest the next one
 * is asked, resuming from the verified prefix (platform/http/blob.ts). Every
 * blob lands as `<dir>/<sha256>` only after its size and digest matched over
 * every byte written; the import takes it from there without reading it again
 * (import.ts, `verified`).
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fetchVerifiedBlob } from '../platform/http/blob.js';
import { BlobFetchError } from '../platform/http/errors.js';
import { pullRanged, rangedPartName } from './peer-ranges.js';
import type { PullOptions, PullPeer } from './pull-types.js';

export type { PullOptions, PullPeer } from './pull-types.js';

/** Default threshold for ranged pulls: below it, one peer per blob keeps the others free. */
export const DEFAULT_RANGE_MIN_BYTES = 64 * 1024 * 1024;

export interface PullResult {
  /** digest → verified file. */
  fetched: Map<string, string>;
  /** digest → the peer that delivered it. */
  from: Map<string, PullPeer>;
  /** Blobs no usable peer delivered this round. */
  unavailable: string[];
}

/** The least-busy usable peers holding `digest`, best first. */
export function rankSources(peers: readonly PullPeer[], digest: string, usable: (p: PullPeer) => boolean) {
  return peers
    .filter((p) => p.holds.has(digest) && usable(p))
    .sort((a, b) => a.busy - b.busy || a.failures - b.failures);
}

export async function pullBlobs(o: PullOptions): Promise<PullResult> {
  const queue = [...o.blobs].sort((a, b) => b.size - a.size); // large first: they set the finish time
  const fetched = new Map<string, string>();
  const from = new Map<string, PullPeer>();
  const unavailable: string[] = [];
  const worker = async () => {
    for (let next = queue.shift(); next && !o.signal.aborted; next = queue.shift()) {
      const got = await pullAny(o, next);
      if (got) {
        fetched.set(next.digest, got.path);
        from.set(next.digest, got.peer);
      } else unavailable.push(next.digest);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.parallel, queue.length)) }, worker));
  return { fetched, from, unavailable: [...unavailable, ...queue.map((b) => b.digest)] };
}

/** A large blob held by two or more usable peers in ranges; any other whole from one peer at a time. */
async function pullAny(
  o: PullOptions,
  blob: { digest: string; size: number },
): Promise<{ path: string; peer: PullPeer } | null> {
  const big = blob.size >= (o.rangeMinBytes ?? DEFAULT_RANGE_MIN_BYTES);
  if (big && rankSources(o.peers, blob.digest, o.usable).length >= 2) {
    const r = await pullRanged(o, blob, (p) => p.holds.has(blob.digest));
    if (r === 'unavailable') return null; // the ranges received stay for the next round
    if (r !== 'whole') return r;
  } else if (o.carried?.delete(blob.digest)) {
    // Ranges kept from a round with more peers: one peer now, so the whole-blob resume takes over.
    await rm(join(o.dir, rangedPartName(blob.digest)), { force: true });
  }
  return pullOne(o, blob);
}

async function pullOne(
  o: PullOptions,
  blob: { digest: string; size: number },
): Promise<{ path: string; peer: PullPeer } | null> {
  const tried = new Set<PullPeer>();
  for (;;) {
    // Ranked again before each try: another worker may have freed or backed off a peer meanwhile.
    const peer = rankSources(o.peers, blob.digest, o.usable).find((p) => !tried.has(p));
    if (!peer || o.signal.aborted) return null;
    tried.add(peer);
    peer.busy++;
    let fault: Parameters<PullOptions['onFault']>[1] | undefined;
    try {
      const got = await fetchVerifiedBlob({
        sha256: blob.digest,
        size: blob.size,
        destDir: o.dir,
        tmpDir: o.dir,
        mirrors: [peer.url],
        transport: o.transport,
        signal: o.signal,
        log: o.log,
        // A peer is asked once per round; the round's back-off is the retry.
        retry: { attempts: 2, baseMs: 200, maxMs: 1000, jitter: true },
        ...(o.limits && { limits: o.limits }),
        onBytes: (have, total, received) => {
          peer.transfer = { digest: blob.digest, have, total };
          peer.received += received;
          o.onReceived?.(peer, received);
        },
        onOutcome: (_m, out) => {
          if (out.kind === 'bad_bytes' || out.kind === 'failed') fault = out;
        },
      });
      peer.failures = 0; // it delivered: only this clears its record
      return { path: got.path, peer };
    } catch (e) {
      if (fault) o.onFault(peer, fault);
      else if (!(e instanceof BlobFetchError)) throw e; // not a source's fault: our disk
    } finally {
      peer.busy--;
    }
  }
}
