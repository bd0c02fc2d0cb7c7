/**
 * The merge rule for a site's rollout decisions (docs/rollout.md "Several
 * mirrors, one site"). Every mirror holds some set of site log entries
 * (core/site-log.ts) and must reach the same answer from the same set,
 * whatever order they came in, without a mirror that has not heard of a
 * decision being able to undo it:
 *
 * * a halt stays in force until a resume names it (`lifts`): a resume lifts
 *   only the halts its mirror knew of, so a halt it never heard of holds;
 * * an abort is final for its rollout; revert if any abort said so;
 * * approvals are per wave and idempotent: the highest wave approved is open;
 * * update-now lets each named agent go, once and for good.
 *
 * `decide` folds a set into a decision; `reconcile` says which operator events
 * bring one gate (core/rollout/gate.ts) to it. Both are pure.
 */
import type { GateState, OperatorEvent } from './gate.js';
import type { SiteLogBody } from '../site-log.js';

export type RolloutBody = Extract<SiteLogBody, { kind: 'rollout' }>;

export interface RolloutEntry {
  id: string;
  body: RolloutBody;
}

export interface SiteDecision {
  rolloutId: string;
  aborted: { revert: boolean; actor: string; reason: string } | null;
  /** Halts no resume lifted, by id. */
  halts: { id: string; actor: string; reason: string }[];
  /** Highest wave an operator approved (0 when none). */
  approved: number;
  forced: { agentId: string; groups: string[] }[];
}

/** The decision a set of entries makes for one rollout: the same for any order of the same set. */
export function decide(entries: readonly RolloutEntry[], rolloutId: string): SiteDecision {
  const mine = entries.filter((e) => e.body.rolloutId === rolloutId);
  const lifted = new Set<string>();
  for (const e of mine) if (e.body.action === 'resume') for (const h of e.body.lifts ?? []) lifted.add(h);
  // Ties between entries of one kind go to the smallest id: any order gives the same words.
  const byId = [...mine].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const aborts = byId.filter((e) => e.body.action === 'abort');
  const forced = new Map<string, string[]>();
  for (const e of byId)
    if (e.body.action === 'update-now' && e.body.agentId !== undefined && !forced.has(e.body.agentId))
      forced.set(e.body.agentId, e.body.groups ?? []);
  return {
    rolloutId,
    aborted: aborts[0]
      ? {
          revert: aborts.some((e) => e.body.revert === true),
          actor: aborts[0].body.actor,
          reason: aborts[0].body.reason,
        }
      : null,
    halts: byId
      .filter((e) => e.body.action === 'halt' && !lifted.has(e.id))
      .map((e) => ({ id: e.id, actor: e.body.actor, reason: e.body.reason })),
    approved: Math.max(0, ...byId.filter((e) => e.body.action === 'approve').map((e) => e.body.wave ?? 0)),
    forced: [...forced].map(([agentId, groups]) => ({ agentId, groups })),
  };
}

const site = (actor: string) => actor.slice(0, 128);

/**
 * The operator events (each naming the rollout) that bring `s`'s gate to decision `d`, in the order
 * to step them; none when it agrees already or runs another rollout. An approval waits for the gate to
 * await it: a site's approval of wave N opens wave N here once this mirror's own evidence has soaked
 * the wave before it.
 */
export function reconcile(s: GateState, d: SiteDecision): OperatorEvent[] {
  const run = s.run;
  if (!run || run.plan.id !== d.rolloutId || run.phase === 'aborted' || run.phase === 'completed') return [];
  const rolloutId = d.rolloutId;
  if (d.aborted) {
    const { revert, actor, reason } = d.aborted;
    return [{ type: 'abort', rolloutId, revert, actor: site(actor), ...(reason !== '' && { reason }) }];
  }
  const out: OperatorEvent[] = [];
  for (const f of d.forced)
    if (s.agents[f.agentId]?.forced !== true)
      out.push({ type: 'update-now', rolloutId, agentId: f.agentId, groups: f.groups, actor: 'site' });
  const halt = d.halts[0];
  if (halt && run.phase !== 'halted') {
    out.push({
      type: 'halt',
      rolloutId,
      actor: site(halt.actor),
      ...(halt.reason !== '' && { reason: halt.reason }),
    });
    return out;
  }
  if (!halt && run.phase === 'halted') {
    out.push({ type: 'resume', rolloutId, actor: 'site', reason: 'resumed at a peer mirror' });
    return out;
  }
  if (run.phase === 'awaiting-approval' && d.approved > run.wave)
    out.push({
      type: 'approve',
      rolloutId,
      actor: 'site',
      reason: `wave ${run.wave + 1} approved at the site`,
    });
  return out;
}
