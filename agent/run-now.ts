/**
 * Reads the site's `run-now` requests for this agent from its rollout answer
 * (`GET /v1/rollout/:agentId`, `runNow: [{id, script}]`, docs/rollout.md). The
 * answer is unsigned, so it is read narrowly: only ids and script names, at
 * most MAX_RUN_NOW of them; what a name may run is decided by the signed
 * policy alone (agent/apply.ts runs a requested script only when the policy
 * assigns it to this agent, with the policy's arguments and the node's own
 * interpreter allowlist). No answer is no request.
 */
import { parseJsonStrict } from '../core/json.js';
import { request } from '../platform/http/client.js';
import type { MirrorSet } from './fetch.js';

export interface RunNowRequest {
  id: string;
  script: string;
}

/** Requests read from one answer; the mirror offers at most 16. */
export const MAX_RUN_NOW = 16;
/** Ids of requests handled, kept in the agent's state so each runs once. */
export const MAX_REMEMBERED_RUN_NOW = 256;

const MAX_ANSWER_BYTES = 16 * 1024;
const ID = /^[0-9a-f]{32}$/;
const NAME = /^[\x21-\x7e]{1,256}$/;

/** The valid requests of an answer body (anything else in it is ignored). */
export function runNowOf(body: unknown): RunNowRequest[] {
  if (typeof body !== 'object' || body === null) return [];
  const list = (body as Record<string, unknown>).runNow;
  if (!Array.isArray(list)) return [];
  const out: RunNowRequest[] = [];
  for (const r of list.slice(0, MAX_RUN_NOW)) {
    if (typeof r !== 'object' || r === null) continue;
    const { id, script } = r as Record<string, unknown>;
    if (typeof id === 'string' && ID.test(id) && typeof script === 'string' && NAME.test(script))
      out.push({ id, script });
  }
  return out;
}

/** Asks the mirrors in order; the first that answers 200 with a rollout answer is taken. */
export async function askRunNow(o: {
  mirrors: MirrorSet;
  agentId: string;
  timeoutMs: number;
  now: () => number;
}): Promise<RunNowRequest[]> {
  for (const mirror of o.mirrors.candidates(o.now())) {
    try {
      // peek: asking for requests is not choosing the rollout's version (mirror/http/rollout.ts)
      const res = await request(`${mirror}/v1/rollout/${o.agentId}?peek=1`, {
        timeoutMs: o.timeoutMs,
        maxBytes: MAX_ANSWER_BYTES,
      });
      if (res.status !== 200) continue;
      return runNowOf(parseJsonStrict(res.body, { maxBytes: MAX_ANSWER_BYTES, maxDepth: 3 }));
    } catch {
      // not this mirror; the next one, or no request this cycle
    }
  }
  return [];
}
