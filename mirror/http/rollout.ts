/**
 * `GET /v1/rollout/:agentId`: which agent version this enrolled agent may run
 * now, and why (core/rollout/answer.ts; docs/rollout.md). Unsigned advice: the
 * agent still applies every check of its own. Unknown agents get 404
 * UNKNOWN_AGENT, revoked ones 403 AGENT_REVOKED, as on the telemetry route.
 * Pending `run-now` requests for the agent ride along as `runNow: [{id, script}]`;
 * with `?peek=1` a yes is not remembered as the agent's start (mirror/rollout.ts).
 */
import Router from '@koa/router';
import { isAgentId } from '../../core/heartbeat.js';
import type { AgentsStore } from '../agents.js';
import type { MirrorRollout } from '../rollout.js';
import type { StateView } from '../snapshot.js';
import { HttpError } from './errors.js';

export function rolloutRouter(rollout: MirrorRollout, agents: AgentsStore, view: StateView): Router {
  const router = new Router({ prefix: '/v1/rollout' });
  router.get('/:agentId', async (ctx) => {
    const agentId = String(ctx.params.agentId);
    if (!isAgentId(agentId))
      throw new HttpError(400, 'BAD_REQUEST', 'an agent id is 32 lowercase hex digits');
    const record = await agents.get(agentId);
    if (!record) throw new HttpError(404, 'UNKNOWN_AGENT', `no agent ${agentId} is enrolled here`);
    if (record.revokedAt !== undefined)
      throw new HttpError(403, 'AGENT_REVOKED', `agent ${agentId} was revoked at this mirror`);
    await rollout.adopt((await view.current()).active?.manifest ?? null);
    ctx.set('Cache-Control', 'no-store');
    // `?peek=1`: an agent that asks only for its run-now requests has not chosen to start the update.
    const answer =
      ctx.query.peek === '1'
        ? rollout.peek(agentId, record.groups)
        : await rollout.answer(agentId, record.groups);
    // Pending run-now requests ride along only when there are some (docs/rollout.md).
    const runNow = rollout.runNow.offeredTo(agentId, record.groups);
    ctx.body = runNow.length > 0 ? { ...answer, runNow } : answer;
  });
  return router;
}
