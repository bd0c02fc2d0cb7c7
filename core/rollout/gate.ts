/**
 * The site's rollout gate as a pure state machine: `step(state, event, now)`
 * returns the next state and the decisions to record (docs/rollout.md). The
 * mirror (mirror/rollout.ts) persists the state and performs the actions; the
 * gate itself never reads a clock, a file or the network, and never changes
 * the state it is given.
 *
 * Time: the gate keeps its own clock, advanced by the wall time between
 * events but by no more than `maxGapMs` at once and never backwards. A clock
 * stepped back does not reopen soak or silence; a clock stepped forward, or a
 * mirror that was down, does not count as soak, nor make updating agents look
 * silent all at once.
 */
import type { RolloutCounts, RolloutEventInfo, RolloutEventName } from '../telemetry.js';
import { pinOf, type Plan } from './plan.js';
import { waveOf } from './wave.js';

export type AgentStatus = 'pending' | 'updating' | 'committed' | 'failed' | 'rolledBack';

export interface AgentView {
  groups: string[];
  /** Version the agent last reported running (signed heartbeat), or null before one. */
  running: string | null;
  /** Gate clock of the agent's last signed heartbeat (or of first sight). */
  seen: number;
  wave: number;
  status: AgentStatus;
  /** Gate clock when the gate told it to start. */
  startedAt: number | null;
  /** A failure an operator accepted by resuming: counted, but not toward the halt threshold. */
  waived: boolean;
  /** `update-now`: this agent may start regardless of its wave and the window. */
  forced: boolean;
}

export type Phase = 'running' | 'awaiting-approval' | 'halted' | 'aborted' | 'completed';

export interface Run {
  plan: Plan;
  phase: Phase;
  /** Highest wave open. */
  wave: number;
  openedAt: number;
  /** Gate clock when the highest open wave met its evidence (its soak began), else null. */
  settledAt: number | null;
  haltReason: string | null;
  revert: boolean;
}

export interface GateState {
  format: 'ferry.rollout-gate/v1';
  /** The gate's own clock (ms) and the wall time of the last event. */
  clock: number;
  wall: number;
  run: Run | null;
  agents: Record<string, AgentView>;
}

export interface GateLimits {
  /** An updating agent with no signed word for this long counts as failed (silent). */
  silentMs: number;
  /** An agent not heard from for this long (and not updating) leaves the counts. */
  vanishMs: number;
  /** A committed agent is evidence for opening the next wave only if heard from this recently. */
  evidenceMs: number;
  /** The most the gate clock advances between two events. */
  maxGapMs: number;
}

export const DEFAULT_GATE_LIMITS: GateLimits = {
  silentMs: 30 * 60_000,
  vanishMs: 24 * 3600_000,
  evidenceMs: 60 * 60_000,
  maxGapMs: 60_000,
};

export interface UpdateOutcome {
  outcome: string;
  version: string;
}

export type OperatorEvent =
  | { type: 'approve'; actor: string; rolloutId?: string; reason?: string }
  | { type: 'halt'; actor: string; rolloutId?: string; reason?: string }
  | { type: 'resume'; actor: string; rolloutId?: string; reason?: string }
  | { type: 'abort'; actor: string; rolloutId?: string; revert: boolean; reason?: string }
  | {
      type: 'update-now';
      actor: string;
      rolloutId?: string;
      agentId: string;
      groups: string[];
      reason?: string;
    };

export type GateEvent =
  /** The active manifest's plan, with the agents enrolled at the site (so waves are judged over the whole fleet). */
  | { type: 'plan'; plan: Plan | null; roster?: { agentId: string; groups: string[] }[] }
  /** A verified heartbeat: the version running and the update outcomes it carries. */
  | { type: 'agent'; agentId: string; groups: string[]; running: string; updates: UpdateOutcome[] }
  /** The gate told this agent it may start. */
  | { type: 'go'; agentId: string; groups: string[] }
  | { type: 'tick' }
  | OperatorEvent;

export const OPERATOR_REFUSALS = [
  'NO_ROLLOUT',
  'ROLLOUT_MISMATCH',
  'ROLLOUT_OVER',
  'NOT_AWAITING_APPROVAL',
  'NOT_HALTED',
  'ALREADY_HALTED',
] as const;
export type OperatorRefusal = (typeof OPERATOR_REFUSALS)[number];

export type GateAction = { type: 'record'; info: RolloutEventInfo };

export interface StepResult {
  state: GateState;
  actions: GateAction[];
  refused?: { code: OperatorRefusal; message: string };
}

export function initialGate(): GateState {
  return { format: 'ferry.rollout-gate/v1', clock: 0, wall: 0, run: null, agents: {} };
}

const isOver = (r: Run) => r.phase === 'aborted' || r.phase === 'completed';

/** Everything an event may change is copied first: the caller's state is never mutated. */
function advance(s: GateState, now: number, limits: GateLimits, inPlace: boolean): GateState {
  const delta = s.wall === 0 ? 0 : Math.min(Math.max(now - s.wall, 0), limits.maxGapMs);
  if (!inPlace) return { ...s, clock: s.clock + delta, wall: now, run: s.run && { ...s.run } };
  s.clock += delta;
  s.wall = now;
  s.run = s.run && { ...s.run };
  return s;
}

function newAgent(s: GateState, agentId: string, groups: string[]): AgentView {
  const run = s.run;
  return {
    groups: [...groups],
    running: null,
    seen: s.clock,
    wave: run ? waveOf(run.plan.id, agentId, run.plan.waves) : 0,
    status: 'pending',
    startedAt: null,
    waived: false,
    forced: false,
  };
}

/**
 * The agents map `step` may write into: the copy it made in this step (pure steps copy at most once,
 * not once per agent), or the caller's own map when the caller handed its state over (`inPlace`).
 */
let writable: Record<string, AgentView> | null = null;

function setAgent(s: GateState, id: string, a: AgentView): void {
  if (s.agents !== writable) writable = s.agents = { ...s.agents };
  s.agents[id] = a;
}

type Standing = 'out' | 'pending' | 'updating' | 'committed' | 'stale' | 'failed' | 'rolledBack' | 'silent';

/** Where one agent stands in the current run's counts. */
export function standing(s: GateState, a: AgentView, id: string, limits: GateLimits): Standing {
  const run = s.run;
  if (!run || pinOf(run.plan.pins, id, a.groups) !== undefined) return 'out';
  const quiet = s.clock - a.seen;
  if (a.status === 'updating')
    return s.clock - Math.max(a.seen, a.startedAt ?? 0) > limits.silentMs ? 'silent' : 'updating';
  if (quiet > limits.vanishMs) return 'out';
  if (a.status === 'committed') return quiet > limits.evidenceMs ? 'stale' : 'committed';
  return a.status;
}

export interface WaveTally {
  counts: RolloutCounts;
  /** Failures not waived by a resume. */
  failures: number;
  /** Committed and heard from recently. */
  evidence: number;
}

const zero = (): RolloutCounts => ({
  agents: 0,
  pending: 0,
  updating: 0,
  committed: 0,
  failed: 0,
  rolledBack: 0,
  silent: 0,
});

/** Counts per wave of the current run (empty when there is none). */
export function tally(s: GateState, limits: GateLimits = DEFAULT_GATE_LIMITS): WaveTally[] {
  const run = s.run;
  if (!run) return [];
  const out = run.plan.waves.map(() => ({ counts: zero(), failures: 0, evidence: 0 }));
  for (const [id, a] of Object.entries(s.agents)) {
    const t = out[a.wave];
    const st = standing(s, a, id, limits);
    if (!t || st === 'out') continue;
    t.counts.agents++;
    if (st === 'stale') t.counts.committed++;
    else t.counts[st]++;
    if (st === 'committed') t.evidence++;
    if ((st === 'failed' || st === 'rolledBack' || st === 'silent') && !a.waived) t.failures++;
  }
  return out;
}

export function sumCounts(list: readonly RolloutCounts[]): RolloutCounts {
  const c = zero();
  for (const x of list) for (const k of Object.keys(c) as (keyof RolloutCounts)[]) c[k] += x[k];
  return c;
}

function record(
  run: Run,
  event: RolloutEventName,
  actor: string,
  reason: string,
  extra: Partial<RolloutEventInfo> = {},
): GateAction {
  return {
    type: 'record',
    info: {
      rolloutId: run.plan.id,
      manifestSequence: run.plan.manifestSequence,
      version: run.plan.version,
      event,
      wave: run.wave,
      actor,
      ...extra,
      reason: reason.slice(0, 512),
    },
  };
}

function startRun(
  s: GateState,
  plan: Plan,
  roster: readonly { agentId: string; groups: string[] }[],
  actions: GateAction[],
): void {
  const last = plan.waves.length - 1;
  const run: Run = {
    plan,
    phase: 'running',
    wave: plan.strategy === 'immediate' ? last : 0,
    openedAt: s.clock,
    settledAt: null,
    haltReason: null,
    revert: false,
  };
  s.run = run;
  const agents: Record<string, AgentView> = {};
  for (const [id, a] of Object.entries(s.agents)) {
    agents[id] = {
      ...a,
      wave: waveOf(plan.id, id, plan.waves),
      status: a.running === plan.version ? 'committed' : 'pending',
      startedAt: null,
      waived: false,
      forced: false,
    };
  }
  for (const r of roster)
    agents[r.agentId] ??= {
      ...newAgent(s, r.agentId, r.groups),
      wave: waveOf(plan.id, r.agentId, plan.waves),
    };
  s.agents = agents;
  actions.push(record(run, 'started', 'mirror', `${plan.strategy} rollout of agent ${plan.version}`));
  actions.push(record(run, 'wave_opened', 'mirror', plan.strategy === 'immediate' ? 'all waves' : 'canary'));
}

function onPlan(
  s: GateState,
  plan: Plan | null,
  roster: readonly { agentId: string; groups: string[] }[],
  actions: GateAction[],
): void {
  const run = s.run;
  if (run && plan && run.plan.id === plan.id) {
    s.run = { ...run, plan };
    return;
  }
  if (run && !isOver(run)) {
    const why = plan
      ? `superseded by rollout ${plan.id.slice(0, 12)} of agent ${plan.version}`
      : 'the active manifest carries no rollout';
    actions.push(record(run, 'superseded', 'mirror', why));
  }
  if (plan) startRun(s, plan, roster, actions);
  else s.run = null;
}

function onAgent(s: GateState, e: Extract<GateEvent, { type: 'agent' }>): void {
  const prior = s.agents[e.agentId] ?? newAgent(s, e.agentId, e.groups);
  const a: AgentView = { ...prior, groups: [...e.groups], running: e.running, seen: s.clock };
  const target = s.run?.plan.version;
  for (const u of e.updates) {
    if (u.version !== target) continue;
    const next: AgentStatus | undefined =
      u.outcome === 'committed'
        ? 'committed'
        : u.outcome === 'rolled-back'
          ? 'rolledBack'
          : u.outcome === 'failed' || u.outcome === 'interrupted' || u.outcome === 'refused'
            ? 'failed'
            : u.outcome === 'healthy'
              ? 'updating'
              : undefined;
    if (next && next !== a.status) {
      a.status = next;
      a.waived = false;
      if (next === 'updating') a.startedAt ??= s.clock;
    }
  }
  if (a.status === 'pending' && e.running === target) a.status = 'committed';
  setAgent(s, e.agentId, a);
}

/** Opens waves whose predecessors soaked, halts over the threshold, completes the run. */
function evaluate(s: GateState, limits: GateLimits, actions: GateAction[]): void {
  for (;;) {
    const run = s.run;
    if (!run || (run.phase !== 'running' && run.phase !== 'awaiting-approval')) return;
    const t = tally(s, limits);
    const threshold = run.plan.maxFailureRate;
    for (const [i, w] of t.entries()) {
      // In a wave not yet open only the agents let go early (update-now) have started: they are its sample.
      const base = i <= run.wave ? w.counts.agents : w.counts.agents - w.counts.pending;
      if (base === 0) continue;
      const rate = w.failures / base;
      if (rate > threshold) {
        const reason = `wave ${i}: ${w.failures} of ${base} failed (rate ${rate.toFixed(3)} > ${threshold})`;
        s.run = { ...run, phase: 'halted', haltReason: reason };
        actions.push(
          record(s.run, 'halted', 'mirror', reason, {
            wave: i,
            counts: w.counts,
            threshold,
            failureRate: rate,
          }),
        );
        return;
      }
    }
    const cur = t[run.wave]!;
    const c = cur.counts;
    // A wave with no agent passes at once, so the first wave that has some is the canary; but
    // nothing passes while the gate knows no agent at all.
    const fleet = t.reduce((n, x) => n + x.counts.agents, 0);
    const settled =
      c.agents === 0 ? fleet > 0 : cur.evidence + c.failed + c.rolledBack + c.silent >= c.agents;
    if (!settled) {
      if (run.settledAt !== null) s.run = { ...run, settledAt: null };
      return;
    }
    if (run.settledAt === null) {
      s.run = { ...run, settledAt: s.clock };
      continue;
    }
    const soakMs = c.agents === 0 ? 0 : (run.plan.waves[run.wave]!.soakMinutes ?? 0) * 60_000;
    if (s.clock - run.settledAt < soakMs) return;
    if (run.wave === run.plan.waves.length - 1) {
      s.run = { ...run, phase: 'completed' };
      actions.push(
        record(s.run, 'completed', 'mirror', 'every wave open and soaked', {
          counts: sumCounts(t.map((x) => x.counts)),
        }),
      );
      return;
    }
    if (run.plan.strategy === 'manual') {
      if (run.phase !== 'awaiting-approval') s.run = { ...run, phase: 'awaiting-approval' };
      return;
    }
    s.run = { ...run, wave: run.wave + 1, openedAt: s.clock, settledAt: null };
    actions.push(record(s.run, 'wave_opened', 'mirror', `wave ${run.wave} soaked`, { counts: c }));
  }
}

function onOperator(
  s: GateState,
  e: OperatorEvent,
  limits: GateLimits,
  actions: GateAction[],
): StepResult['refused'] {
  const run = s.run;
  if (!run) return { code: 'NO_ROLLOUT', message: 'the active manifest carries no rollout' };
  if (e.rolloutId !== undefined && e.rolloutId !== run.plan.id)
    return { code: 'ROLLOUT_MISMATCH', message: `the current rollout is ${run.plan.id}, not ${e.rolloutId}` };
  if (isOver(run)) return { code: 'ROLLOUT_OVER', message: `the rollout is ${run.phase}` };
  const why = (fallback: string) => (e.reason !== undefined && e.reason !== '' ? e.reason : fallback);
  switch (e.type) {
    case 'approve': {
      if (run.phase !== 'awaiting-approval')
        return {
          code: 'NOT_AWAITING_APPROVAL',
          message: `the rollout is ${run.phase}, not awaiting approval`,
        };
      const counts = tally(s, limits)[run.wave]?.counts;
      s.run = { ...run, phase: 'running', wave: run.wave + 1, openedAt: s.clock, settledAt: null };
      actions.push(
        record(s.run, 'approved', e.actor, why(`wave ${run.wave + 1} approved`), counts && { counts }),
      );
      actions.push(record(s.run, 'wave_opened', e.actor, 'approved'));
      return undefined;
    }
    case 'halt':
      if (run.phase === 'halted') return { code: 'ALREADY_HALTED', message: `halted: ${run.haltReason}` };
      s.run = { ...run, phase: 'halted', haltReason: why(`halted by ${e.actor}`) };
      actions.push(record(s.run, 'halted', e.actor, s.run.haltReason!));
      return undefined;
    case 'resume': {
      if (run.phase !== 'halted') return { code: 'NOT_HALTED', message: `the rollout is ${run.phase}` };
      const agents: Record<string, AgentView> = {};
      for (const [id, a] of Object.entries(s.agents)) {
        const st = standing(s, a, id, limits);
        const failing = st === 'failed' || st === 'rolledBack' || a.status === 'updating';
        agents[id] = failing && !a.waived ? { ...a, waived: true } : a;
      }
      s.agents = agents;
      s.run = { ...run, phase: 'running', haltReason: null, settledAt: null };
      actions.push(record(s.run, 'resumed', e.actor, why('resumed; failures so far accepted')));
      return undefined;
    }
    case 'abort':
      s.run = { ...run, phase: 'aborted', revert: e.revert };
      actions.push(
        record(
          s.run,
          'aborted',
          e.actor,
          why(e.revert ? 'aborted; updated agents go back' : 'aborted; agents stay'),
          {
            revert: e.revert,
          },
        ),
      );
      return undefined;
    case 'update-now': {
      const a = s.agents[e.agentId] ?? newAgent(s, e.agentId, e.groups);
      setAgent(s, e.agentId, { ...a, forced: true });
      actions.push(record(run, 'update_now', e.actor, why(`agent ${e.agentId} may update now`)));
      return undefined;
    }
  }
}

/**
 * How a caller that owns its state may save work: `inPlace` lets the step write into `state` (the
 * caller keeps only the result; a pure step copies), and `evaluate: false` skips judging the waves
 * for all but the last of a batch of agent events (the last one judges them all).
 */
export interface StepOptions {
  inPlace?: boolean;
  evaluate?: boolean;
}

export function step(
  state: GateState,
  event: GateEvent,
  now: number,
  limits: GateLimits = DEFAULT_GATE_LIMITS,
  opts: StepOptions = {},
): StepResult {
  const s = advance(state, now, limits, opts.inPlace === true);
  writable = opts.inPlace === true ? s.agents : null;
  try {
    return stepIn(s, event, limits, opts.evaluate !== false);
  } finally {
    writable = null;
  }
}

function stepIn(s: GateState, event: GateEvent, limits: GateLimits, judge: boolean): StepResult {
  const actions: GateAction[] = [];
  let refused: StepResult['refused'];
  switch (event.type) {
    case 'plan':
      onPlan(s, event.plan, event.roster ?? [], actions);
      break;
    case 'agent':
      onAgent(s, event);
      break;
    case 'go': {
      const a = s.agents[event.agentId] ?? newAgent(s, event.agentId, event.groups);
      if (a.status === 'pending' || a.status === 'failed' || a.status === 'rolledBack')
        setAgent(s, event.agentId, { ...a, status: 'updating', startedAt: s.clock, waived: false });
      break;
    }
    case 'tick':
      break;
    default:
      refused = onOperator(s, event, limits, actions);
  }
  if (judge || refused || event.type !== 'agent') evaluate(s, limits, actions);
  return refused ? { state: s, actions, refused } : { state: s, actions };
}
