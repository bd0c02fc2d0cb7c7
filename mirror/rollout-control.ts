/**
 * The control socket's rollout routes (mirror/control.ts), used by `ferry mirror
 * rollout …` and `ferry mirror update-now`: each turns a request into one
 * operator event for the gate (core/rollout/gate.ts), which records it.
 *
 *   GET  /rollout            {rollout: RolloutSummary | null}
 *   POST /rollout            {action: approve|halt|resume|abort, actor, reason?, revert?, rolloutId?}
 *   POST /update-now         {agent, actor, reason?}
 *   POST /run-now            {script, agent? | group?, actor, reason?}  (mirror/run-now.ts)
 */
import { CodedError } from '../core/errors.js';
import type { OperatorEvent } from '../core/rollout/gate.js';
import type { AgentsStore } from './agents.js';
import type { ControlHandler } from './control.js';
import type { MirrorRollout } from './rollout.js';
import type { RunNowTarget } from './run-now.js';
import type { StateView } from './snapshot.js';

const usage = (m: string) => new CodedError('USAGE', m);

function text(v: unknown, what: string, max: number, optional = false): string | undefined {
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string' || v === '' || v.length > max) throw usage(`${what} must be 1-${max} characters`);
  return v;
}

/** An operator event from a control request body, checked field by field. */
export function operatorEventOf(b: Record<string, unknown>): OperatorEvent {
  const actor = text(b.actor, 'actor', 128)!;
  const reason = text(b.reason, 'reason', 512, true);
  const rolloutId = text(b.rolloutId, 'rolloutId', 64, true);
  const common = {
    actor,
    ...(reason !== undefined && { reason }),
    ...(rolloutId !== undefined && { rolloutId }),
  };
  switch (b.action) {
    case 'approve':
    case 'halt':
    case 'resume':
      return { type: b.action, ...common };
    case 'abort':
      if (b.revert !== undefined && typeof b.revert !== 'boolean') throw usage('revert must be a boolean');
      return { type: 'abort', ...common, revert: b.revert === true };
    default:
      throw usage('action must be approve, halt, resume or abort');
  }
}

export function rolloutControl(
  rollout: MirrorRollout,
  agents: AgentsStore,
  view?: StateView,
): Record<string, ControlHandler> {
  return {
    'GET /rollout': () => Promise.resolve({ rollout: rollout.rolloutSummary() }),
    'POST /rollout': async (b) => {
      const r = await rollout.operator(operatorEventOf(b));
      return { rollout: rollout.rolloutSummary(), recorded: r.actions.map((a) => a.info.event) };
    },
    'POST /update-now': async (b) => {
      const agentId = text(b.agent, 'agent', 64)!;
      const record = await agents.get(agentId);
      if (!record || record.revokedAt !== undefined)
        throw new CodedError('UNKNOWN_AGENT', `no agent ${agentId} is enrolled here`);
      const actor = text(b.actor, 'actor', 128)!;
      const reason = text(b.reason, 'reason', 512, true);
      const r = await rollout.operator({
        type: 'update-now',
        actor,
        agentId,
        groups: record.groups,
        ...(reason !== undefined && { reason }),
      });
      return { agent: agentId, recorded: r.actions.map((a) => a.info.event) };
    },
    'POST /run-now': async (b) => {
      const script = text(b.script, 'script', 256)!;
      if (b.agent !== undefined && b.group !== undefined) throw usage('give --agent or --group, not both');
      let target: RunNowTarget = { all: true };
      if (b.agent !== undefined) {
        const agentId = text(b.agent, 'agent', 64)!;
        const record = await agents.get(agentId);
        if (!record || record.revokedAt !== undefined)
          throw new CodedError('UNKNOWN_AGENT', `no agent ${agentId} is enrolled here`);
        target = { agent: agentId };
      } else if (b.group !== undefined) {
        const group = text(b.group, 'group', 128)!;
        target = { group };
      }
      const actor = text(b.actor, 'actor', 128)!;
      const reason = text(b.reason, 'reason', 512, true);
      const manifest = view ? ((await view.current()).active?.manifest ?? null) : null;
      const q = await rollout.runNow.request(manifest, {
        script,
        target,
        actor,
        ...(reason !== undefined && { reason }),
      });
      return { request: { ...q } };
    },
  };
}
