/**
 * Self-update limits from the environment: $FERRY_AGENT_UPDATE_LIMITS holds
 * JSON such as {"soakMs":1000}; unknown keys and anything that is not a
 * non-negative number are ignored, so a bad setting never stops an agent.
 */
import type { UpdateLimits } from './machine.js';

/** Limits from $FERRY_AGENT_UPDATE_LIMITS (JSON, e.g. {"soakMs":1000}); numbers only. */
export function limitsFromEnv(env = process.env): Partial<UpdateLimits> {
  const text = env.FERRY_AGENT_UPDATE_LIMITS;
  if (!text) return {};
  const v = JSON.parse(text) as Record<string, unknown>;
  const out: Partial<UpdateLimits> = {};
  for (const k of ['maxAttempts', 'selfTestMs', 'healthMs', 'soakMs'] as const) {
    const n = v[k];
    if (typeof n === 'number' && Number.isFinite(n) && n >= 0) out[k] = n;
  }
  return out;
}
