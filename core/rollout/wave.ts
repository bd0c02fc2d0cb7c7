/**
 * Which wave an agent belongs to: a stable hash of (rollout id, agent id) mapped
 * onto 10,000 buckets; the agent is in the first wave whose cumulative percent
 * covers its bucket. The same agent lands in the same wave at every poll, after
 * every restart and at every mirror of the site; a new rollout reshuffles, so
 * the same hosts are not always the canaries.
 */
import { createHash } from 'node:crypto';

export const BUCKETS = 10_000;

export function bucketOf(rolloutId: string, agentId: string): number {
  const h = createHash('sha256').update(`ferry.rollout.wave/v1\0${rolloutId}\0${agentId}`).digest();
  return h.readUInt32BE(0) % BUCKETS;
}

/** Index of the wave for a bucket; waves' percents grow and the last is 100. */
export function waveForBucket(bucket: number, waves: readonly { percent: number }[]): number {
  for (const [i, w] of waves.entries()) if (bucket < (w.percent * BUCKETS) / 100) return i;
  return waves.length - 1;
}

export function waveOf(rolloutId: string, agentId: string, waves: readonly { percent: number }[]): number {
  return waveForBucket(bucketOf(rolloutId, agentId), waves);
}
