/**
 * What peer-pulls/ may hold, and when a file there is stale. The directory
 * holds, per blob digest, a whole-blob partial (`<sha256>.part`, resumed by
 * platform/http/blob.ts from its verified prefix), a ranged partial
 * (`<sha256>.ranges.part`, peer-ranges.ts, whose list of received ranges
 * lives in memory), or a verified blob waiting for its import (`<sha256>`).
 *
 * A file is removed when the store already holds its blob, when it is a
 * ranged partial whose range list is gone (a restart), when its name is none
 * of these, and — once every peer has said what it offers, so a peer that is
 * down cannot lose the transfer it will resume — when no offer and no pending
 * manifest names its digest any more (an abandoned transfer).
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../platform/log.js';

const NAME = /^([0-9a-f]{64})(\.part|\.ranges\.part)?$/;

export interface SweepOptions {
  dir: string;
  held: (digest: string) => Promise<boolean>;
  /** Digests with a ranged pull under way (their range list is known). */
  ranged: ReadonlySet<string>;
  /** Digests still wanted; undefined while that is not known (a peer has not answered yet). */
  wanted: ReadonlySet<string> | undefined;
  log: Logger;
}

/** Removes stale files; returns the digests (or names) removed. */
export async function sweepPartials(o: SweepOptions): Promise<string[]> {
  const removed: string[] = [];
  let names: string[];
  try {
    names = await readdir(o.dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return removed;
    throw e;
  }
  for (const name of names) {
    const m = NAME.exec(name);
    const digest = m?.[1];
    const why = !digest
      ? 'unknown'
      : (await o.held(digest))
        ? 'held'
        : m[2] === '.ranges.part' && !o.ranged.has(digest)
          ? 'ranges-lost'
          : o.wanted && !o.wanted.has(digest)
            ? 'unwanted'
            : undefined;
    if (!why) continue;
    await rm(join(o.dir, name), { recursive: true, force: true });
    o.log.info('peer.partial_removed', { file: name, reason: why });
    removed.push(name);
  }
  return removed;
}
