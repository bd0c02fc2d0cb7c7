/**
 * Asks the site's rollout gate (`GET /v1/rollout/:agentId`, docs/rollout.md)
 * whether this agent may start the update its signed manifest offers. The
 * answer is unsigned advice, so it is read narrowly: it can only say yes or
 * no to the exact rollout (by identity, computed here from the signed
 * manifest) and version the agent already chose under its own checks, and it
 * never names a version the agent would go to. No answer — no mirror reachable,
 * an error, an answer about another rollout — is a no: a gate that cannot be
 * asked has not opened this agent's wave (docs/decisions.md).
 */
import { parseJsonStrict } from '../../core/json.js';
import type { Manifest } from '../../core/manifest.js';
import { rolloutIdOf } from '../../core/rollout/plan.js';
import { request } from '../../platform/http/client.js';
import type { MirrorSet } from '../fetch.js';

export interface GateVerdict {
  allowed: boolean;
  /** The gate's reason code (GO, WAVE_NOT_OPEN, HALTED, REVERT …) or NO_ANSWER. */
  code: string;
  reason: string;
}

const MAX_ANSWER_BYTES = 16 * 1024;

export async function askRolloutGate(o: {
  mirrors: MirrorSet;
  agentId: string;
  manifest: Manifest;
  version: string;
  timeoutMs: number;
  now: () => number;
}): Promise<GateVerdict> {
  const rolloutId = rolloutIdOf(o.manifest);
  if (rolloutId === undefined)
    return { allowed: true, code: 'NO_ROLLOUT', reason: 'the manifest has no rollout' };
  let last = 'no mirror answered';
  for (const mirror of o.mirrors.candidates(o.now())) {
    try {
      const res = await request(`${mirror}/v1/rollout/${o.agentId}`, {
        timeoutMs: o.timeoutMs,
        maxBytes: MAX_ANSWER_BYTES,
      });
      if (res.status !== 200) {
        last = `${mirror} answered ${res.status}`;
        continue;
      }
      const v = parseJsonStrict(res.body, { maxBytes: MAX_ANSWER_BYTES, maxDepth: 3 }) as Record<
        string,
        unknown
      >;
      if (typeof v !== 'object' || v === null || typeof v.code !== 'string' || typeof v.may !== 'boolean') {
        last = `${mirror} answered something that is not a rollout answer`;
        continue;
      }
      const reason = typeof v.reason === 'string' ? v.reason.slice(0, 256) : '';
      if (v.rolloutId !== rolloutId || v.version !== o.version)
        return { allowed: false, code: 'ROLLOUT_MISMATCH', reason: `the mirror's gate runs another rollout` };
      return { allowed: v.may && v.code !== 'ALREADY_THERE', code: v.code.slice(0, 32), reason };
    } catch (e) {
      last = `${mirror}: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  return { allowed: false, code: 'NO_ANSWER', reason: `the rollout gate did not answer (${last})` };
}
